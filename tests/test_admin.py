"""The request log in the admin: list, filters, search, date hierarchy, detail page, CSV export, and
that a page costs the same queries however many rows there are.

Marked `postgres`: `make test` runs these again on PostgreSQL (the skip scan and the probes are SQL
that differs by backend).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission

from inference.models import RequestLog

from .samples import data_uri, image_bytes

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

CHANGELIST = "/admin/inference/requestlog/"


def log_row(received_at: datetime, **fields) -> RequestLog:
    defaults = {"endpoint": "/api/v1/generate", "method": "POST", "status_code": 200, "model": "qwen"}
    return RequestLog(id=uuid.uuid4(), received_at=received_at, **{**defaults, **fields})


def many_rows(count: int, *, start: datetime) -> list[RequestLog]:
    statuses = (200, 200, 400, 503)
    keys = ("", "team-a", "team-b")
    return [
        log_row(
            start + timedelta(seconds=index),
            status_code=statuses[index % 4],
            api_key=keys[index % 3],
            input_tokens=10 + index,
            output_tokens=4,
            total_ms=100.0 + index,
            ttft_ms=20.0,
            prompt_preview=f"question {index}",
        )
        for index in range(count)
    ]


def result_ids(response) -> list[str]:
    return re.findall(r'name="_selected_action" value="([0-9a-f-]{36})"', response.content.decode())


def test_the_list_shows_status_endpoint_model_tokens_and_latency(admin_client):
    row = log_row(
        datetime(2026, 3, 4, 12, 0, 1, 234_000, tzinfo=UTC),
        status_code=503, api_key="team-a", input_tokens=120, output_tokens=7, total_ms=1234.5, ttft_ms=56.0,
        error_reason="overloaded",
    )  # fmt: skip
    row.save()
    page = admin_client.get(CHANGELIST).content.decode()
    for text in ("2026-03-04 12:00:01.234", "503", "POST /api/v1/generate", "qwen", "team-a", "120 / 7", "1,234 ms",
                 "56 ms", "overloaded"):  # fmt: skip
        assert text in page, text
    assert 'href="/admin/dashboard/"' in page


@pytest.mark.parametrize("rows", [10, 300])
def test_a_page_costs_the_same_queries_for_ten_rows_or_three_hundred(admin_client, django_assert_num_queries, rows):
    RequestLog.objects.bulk_create(many_rows(rows, start=datetime(2026, 3, 4, tzinfo=UTC)))
    # Session, user, COUNT, the page of rows, four filter skip scans, the date range (first and
    # last), the day probes: nothing per row, and no full-table DISTINCT.
    with django_assert_num_queries(11):
        response = admin_client.get(CHANGELIST)
    assert response.status_code == 200 and len(result_ids(response)) == min(rows, 50)


def test_filters_offer_the_stored_values_and_narrow_the_list(admin_client):
    RequestLog.objects.bulk_create(many_rows(12, start=datetime(2026, 3, 4, tzinfo=UTC)))
    page = admin_client.get(CHANGELIST).content.decode()
    for choice in ("?status_code=200", "?status_code=400", "?status_code=503", "?api_key=team-a", "?api_key=team-b",
                   "?endpoint=%2Fapi%2Fv1%2Fgenerate", "?model=qwen", "?received_at__gte="):  # fmt: skip
        assert choice in page, choice
    assert "(none)" in page  # rows without an API key
    assert len(result_ids(admin_client.get(CHANGELIST, {"api_key": "team-b"}))) == 4
    assert len(result_ids(admin_client.get(CHANGELIST, {"api_key": ""}))) == 4
    assert len(result_ids(admin_client.get(CHANGELIST, {"status_code": "503"}))) == 3


def test_search_finds_a_request_id_or_prompt_text(admin_client):
    rows = many_rows(5, start=datetime(2026, 3, 4, tzinfo=UTC))
    RequestLog.objects.bulk_create(rows)
    target = rows[3]
    assert result_ids(admin_client.get(CHANGELIST, {"q": str(target.id)})) == [str(target.id)]
    assert result_ids(admin_client.get(CHANGELIST, {"q": target.id.hex.upper()})) == [str(target.id)]
    assert result_ids(admin_client.get(CHANGELIST, {"q": "QUESTION 2"})) == [str(rows[2].id)]
    assert result_ids(admin_client.get(CHANGELIST, {"q": "no such text"})) == []


def test_the_date_hierarchy_drills_down_through_periods_that_have_rows(admin_client):
    RequestLog.objects.bulk_create(
        [log_row(at) for at in (datetime(2025, 12, 31, 23, 59, tzinfo=UTC), datetime(2026, 2, 3, 8, tzinfo=UTC),
                                datetime(2026, 2, 17, 9, tzinfo=UTC), datetime(2026, 2, 17, 23, 59, 59, tzinfo=UTC))]
    )  # fmt: skip

    def links(params: dict) -> list[str]:
        page = admin_client.get(CHANGELIST, params).content.decode()
        toplinks = re.search(r'<nav class="toplinks">(.*?)</nav>', page, re.S).group(1)
        return [html.unescape(text).strip() for text in re.findall(r"<a [^>]*>([^<]*)</a>", toplinks)]

    assert links({}) == ["2025", "2026"]
    assert links({"received_at__year": "2026"}) == ["‹ All dates", "February 2026"]
    assert links({"received_at__year": "2026", "received_at__month": "2"}) == ["‹ 2026", "February 3", "February 17"]
    day = {"received_at__year": "2026", "received_at__month": "2", "received_at__day": "17"}
    assert links(day) == ["‹ February 2026"]
    assert len(result_ids(admin_client.get(CHANGELIST, day))) == 2


def test_the_log_is_read_only(admin_client):
    row = log_row(datetime(2026, 3, 4, tzinfo=UTC))
    row.save()
    assert admin_client.get(CHANGELIST + "add/").status_code == 403
    assert admin_client.post(f"{CHANGELIST}{row.id}/change/", {"status_code": 500}).status_code == 403
    assert admin_client.get(f"{CHANGELIST}{row.id}/delete/").status_code == 403
    page = admin_client.get(CHANGELIST).content.decode()
    assert 'value="export_csv"' in page and 'value="delete_selected"' not in page
    RequestLog.objects.get(id=row.id, status_code=200)


def test_the_detail_page_breaks_down_latency_and_lists_media_hashes(api, admin_client):
    raw = image_bytes((64, 48))
    response = api.post(
        "/api/v1/generate",
        {"messages": [{"role": "user", "content": [{"type": "image", "image": data_uri(raw)}, {"type": "text", "text": "?"}]}],
         "max_new_tokens": 3},
    )  # fmt: skip
    assert response.status_code == 200, response.content
    page = admin_client.get(f"{CHANGELIST}{response.json()['request_id']}/change/").content.decode()
    table = re.search(r'<table class="latency-table">(.*?)</table>', page, re.S).group(1)
    assert [stage for stage in ("preprocess", "queue", "prefill", "decode", "response") if stage in table] == [
        "preprocess", "queue", "prefill", "decode", "response",
    ]  # fmt: skip
    assert hashlib.sha256(raw).hexdigest() in page and "64×48" in page
    assert 'class="latency-bar"' in page


def test_csv_export_streams_every_field_of_the_selected_rows(admin_client):
    rows = many_rows(4, start=datetime(2026, 3, 4, tzinfo=UTC))
    rows[1].prompt_preview = "=HYPERLINK('http://example.invalid')"
    rows[1].media = [{"kind": "image", "sha256": "ab" * 32, "size": [64, 48]}]
    RequestLog.objects.bulk_create(rows)

    response = admin_client.post(
        CHANGELIST, {"action": "export_csv", "_selected_action": [str(rows[1].id), str(rows[2].id)]}
    )

    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="request-log-')
    table = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [uuid.UUID(line["id"]) for line in table] == [rows[2].id, rows[1].id]  # newest first
    assert set(table[0]) == {field.name for field in RequestLog._meta.concrete_fields}
    exported = table[1]
    assert exported["prompt_preview"] == "'=HYPERLINK('http://example.invalid')"  # not a formula in a spreadsheet
    assert json.loads(exported["media"]) == [{"kind": "image", "sha256": "ab" * 32, "size": [64, 48]}]
    assert exported["received_at"] == "2026-03-04T00:00:01+00:00" and exported["input_tokens"] == "11"


def test_csv_export_of_all_matching_rows(admin_client):
    RequestLog.objects.bulk_create(many_rows(120, start=datetime(2026, 3, 4, tzinfo=UTC)))
    response = admin_client.post(
        CHANGELIST + "?status_code=200", {"action": "export_csv", "select_across": "1", "_selected_action": ["x"]}
    )
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 1 + 60


def test_staff_need_the_view_permission(client, django_user_model):
    staff = django_user_model.objects.create_user("staff", password="a-long-test-password", is_staff=True)
    client.force_login(staff)
    assert client.get(CHANGELIST).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_requestlog"))
    assert client.get(CHANGELIST).status_code == 200
