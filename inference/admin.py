"""The request log in the admin: a read-only history, fast with a million rows, exportable as CSV.

Django's admin defaults read the whole table in three places (the filters' SELECT DISTINCT, the date
hierarchy's distinct dates, and facet counts); each is replaced here by index lookups from
`selectors`, so a page costs the same with a hundred rows or a million.
"""

from __future__ import annotations

import csv
import json
import uuid
from calendar import monthrange
from collections.abc import Iterable, Iterator
from datetime import date, datetime

from django.contrib import admin
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst

from . import selectors
from .models import RequestLog

# Characters that make a spreadsheet treat a cell as a formula (CSV injection, OWASP): prompt
# previews are client text, so such cells are prefixed with a quote.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class IndexedValuesFilter(admin.AllValuesFieldListFilter):
    """A filter whose choices come from an index skip scan instead of SELECT DISTINCT over all rows."""

    def __init__(self, field, request, params, model, model_admin, field_path) -> None:
        super().__init__(field, request, params, model, model_admin, field_path)
        self.lookup_choices = selectors.request_log_distinct_values(field_name=field_path)

    def choices(self, changelist):
        for choice in super().choices(changelist):
            # Rows without an API key or a model store "": show that as a choice one can see and click.
            yield {**choice, "display": "(none)"} if choice["display"] == "" else choice


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    """Read-only history of API requests."""

    list_display = (
        "received", "status", "request", "model", "api_key", "tokens", "latency", "time_to_first_token", "error_reason",
    )  # fmt: skip
    list_display_links = ("received",)
    # Sorting by an unindexed column sorts the whole table on every page; these two have indexes.
    sortable_by = ("received", "status")
    list_filter = (
        ("status_code", IndexedValuesFilter),
        ("endpoint", IndexedValuesFilter),
        ("model", IndexedValuesFilter),
        ("api_key", IndexedValuesFilter),
        "received_at",
    )
    search_fields = ("id", "prompt_preview")
    search_help_text = "A request id (exact), or text in the prompt preview."
    date_hierarchy = "received_at"
    list_per_page = 50
    # With a million rows: one COUNT for the paginator, never a second for the unfiltered total,
    # and no facet counts (each is a scan of every filtered row).
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ("export_csv",)
    readonly_fields = ("latency_breakdown", "media_summary")
    fieldsets = (
        (None, {"fields": ("id", "received_at", "finished_at", "endpoint", "method", "status_code", "client_ip",
                           "api_key", "model")}),
        ("Request", {"fields": ("max_new_tokens", "temperature", "top_p", "num_messages", "prompt_preview",
                                "num_images", "num_videos", "media_summary")}),
        ("Usage", {"fields": ("visual_tokens", "input_tokens", "output_tokens", "total_tokens", "finish_reason")}),
        ("Latency", {"fields": ("latency_breakdown", "queue_ms", "preprocess_ms", "ttft_ms", "decode_ms", "total_ms",
                                "output_tokens_per_s", "batch_size")}),
        ("Error", {"fields": ("error_reason", "error_detail")}),
    )  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: RequestLog | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: RequestLog | None = None) -> bool:
        return False

    def get_search_results(self, request: HttpRequest, queryset, search_term: str):
        """A UUID finds its row by primary key; anything else searches the prompt previews."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            return queryset.filter(prompt_preview__icontains=term), False

    def get_changelist_instance(self, request: HttpRequest):
        changelist = super().get_changelist_instance(request)
        # The change_list.html override shows these instead of the admin's own date hierarchy.
        changelist.date_hierarchy_links = date_hierarchy_links(changelist)
        return changelist

    # --- list columns ---------------------------------------------------------------------------

    @admin.display(description="received", ordering="received_at")
    def received(self, row: RequestLog) -> str:
        # To the millisecond: requests a second apart must not read the same ("4 p.m." by default).
        return timezone.localtime(row.received_at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

    @admin.display(description="request")
    def request(self, row: RequestLog) -> str:
        return f"{row.method} {row.endpoint}"

    @admin.display(description="status", ordering="status_code")
    def status(self, row: RequestLog):
        colour = "#2e7d32" if row.status_code < 400 else "#ef6c00" if row.status_code < 500 else "#c62828"
        return format_html('<strong style="color: {}">{}</strong>', colour, row.status_code)

    @admin.display(description="tokens in / out")
    def tokens(self, row: RequestLog) -> str:
        if row.input_tokens is None:
            return "–"
        return f"{row.input_tokens} / {row.output_tokens}"

    @admin.display(description="latency")
    def latency(self, row: RequestLog) -> str:
        return _milliseconds(row.total_ms)

    @admin.display(description="TTFT")
    def time_to_first_token(self, row: RequestLog) -> str:
        return _milliseconds(row.ttft_ms)

    # --- the detail page ------------------------------------------------------------------------

    @admin.display(description="breakdown")
    def latency_breakdown(self, row: RequestLog):
        """Where the request's time went, as a stacked bar and a table, stage by stage."""
        stages = latency_stages(row)
        if not stages:
            return format_html("{} (no generation)", _milliseconds(row.total_ms))
        total = sum(ms for _, ms, _ in stages) or 1.0
        bar = format_html_join(
            "",
            '<span title="{}: {}" style="display:inline-block;height:14px;width:{}%;background:{}"></span>',
            ((name, _milliseconds(ms), f"{100 * ms / total:.2f}", colour) for name, ms, colour in stages),
        )
        rows = format_html_join(
            "",
            '<tr><td><span style="display:inline-block;width:10px;height:10px;background:{}"></span> {}</td>'
            '<td style="text-align:right">{}</td><td style="text-align:right">{}%</td></tr>',
            ((colour, name, _milliseconds(ms), f"{100 * ms / total:.1f}") for name, ms, colour in stages),
        )
        return format_html(
            '<div class="latency-bar" style="width:420px;border:1px solid var(--hairline-color)">{}</div>'
            '<table class="latency-table"><tbody>{}</tbody></table>',
            bar,
            rows,
        )

    @admin.display(description="media")
    def media_summary(self, row: RequestLog):
        if not row.media:
            return "–"
        return format_html(
            "<table><thead><tr><th>kind</th><th>source</th><th>size</th><th>resized</th><th>sha256</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                (
                    (
                        item.get("kind", ""),
                        item.get("source", ""),
                        _dimensions(item.get("size")),
                        _dimensions(item.get("resized")),
                        item.get("sha256", ""),
                    )
                    for item in row.media
                ),
            ),
        )

    # --- actions --------------------------------------------------------------------------------

    @admin.action(description="Export selected request logs as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset):
        """Every field of the selected rows, streamed: 'select all' over a million rows works too."""
        filename = f"request-log-{timezone.now():%Y%m%d-%H%M%S}.csv"
        return StreamingHttpResponse(
            csv_lines(selectors.request_log_export_rows(queryset=queryset)),
            content_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )


# Stage, colour; the stages follow the request: media and processor work in the request thread, the
# wait for a batch, the prompt's forward pass, then token by token, then writing the response.
STAGE_COLOURS = {
    "preprocess": "#8e24aa",
    "queue": "#f9a825",
    "prefill": "#1565c0",
    "decode": "#2e7d32",
    "response": "#9e9e9e",
}


def latency_stages(row: RequestLog) -> list[tuple[str, float, str]]:
    """(stage, ms, colour) from the stored timings. Prefill and response are what remains between
    the measured marks: time to first token counts from arrival, so it holds preprocess and queue."""
    if row.ttft_ms is None or row.total_ms is None:
        return []
    preprocess, queue, decode = row.preprocess_ms or 0.0, row.queue_ms or 0.0, row.decode_ms or 0.0
    stages = {
        "preprocess": preprocess,
        "queue": queue,
        "prefill": max(row.ttft_ms - preprocess - queue, 0.0),
        "decode": decode,
        "response": max(row.total_ms - row.ttft_ms - decode, 0.0),
    }
    return [(name, ms, STAGE_COLOURS[name]) for name, ms in stages.items()]


def csv_lines(rows: Iterable[tuple]) -> Iterator[str]:
    """CSV text, one line per row (the first is the header); JSON for the media list."""
    buffer = _LineBuffer()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow([_csv_cell(value) for value in row])
        yield buffer.take()


class _LineBuffer:
    """The file csv.writer writes into: hands each written line back instead of keeping it."""

    def __init__(self) -> None:
        self._line = ""

    def write(self, text: str) -> None:
        self._line += text

    def take(self) -> str:
        line, self._line = self._line, ""
        return line


def _csv_cell(value):
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return "" if value is None else value


def _milliseconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _dimensions(size) -> str:
    return f"{size[0]}×{size[1]}" if size else "–"


# --- the date hierarchy -------------------------------------------------------------------------


def date_hierarchy_links(changelist) -> dict:
    """What admin/date_hierarchy.html shows, as the admin's own tag decides it (years, then months,
    then days, and back links), but asking the database only whether each period has rows."""
    if not changelist.date_hierarchy:
        return {"show": False}
    field = changelist.date_hierarchy
    year_field, month_field, day_field = f"{field}__year", f"{field}__month", f"{field}__day"
    year, month, day = (_int_param(changelist.params.get(name)) for name in (year_field, month_field, day_field))

    def link(filters: dict) -> str:
        return changelist.get_query_string(filters, [f"{field}__"])

    if not (year or month or day):
        first, last = selectors.request_log_received_range(queryset=changelist.queryset)
        if first is None or last is None:
            return {"show": False}
        first, last = timezone.localtime(first), timezone.localtime(last)
        if first.year == last.year:
            year = first.year
            if first.month == last.month:
                month = first.month
        else:
            years = list(range(first.year, last.year + 1))
            periods = [(_local(date(y, 1, 1)), _local(date(y + 1, 1, 1))) for y in years]
            return {
                "show": True,
                "choices": [
                    {"link": link({year_field: str(y)}), "title": str(y)}
                    for y, has_rows in zip(years, _periods_with_rows(changelist, periods), strict=True)
                    if has_rows
                ],
            }
    if year and month and day:
        selected = date(year, month, day)
        return {
            "show": True,
            "back": {
                "link": link({year_field: str(year), month_field: str(month)}),
                "title": capfirst(formats.date_format(selected, "YEAR_MONTH_FORMAT")),
            },
            "choices": [{"title": capfirst(formats.date_format(selected, "MONTH_DAY_FORMAT"))}],
        }
    if year and month:
        days = [date(year, month, d) for d in range(1, monthrange(year, month)[1] + 1)]
        periods = [(_local(d), _local(date.fromordinal(d.toordinal() + 1))) for d in days]
        return {
            "show": True,
            "back": {"link": link({year_field: str(year)}), "title": str(year)},
            "choices": [
                {
                    "link": link({year_field: str(year), month_field: str(month), day_field: str(d.day)}),
                    "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT")),
                }
                for d, has_rows in zip(days, _periods_with_rows(changelist, periods), strict=True)
                if has_rows
            ],
        }
    if year:
        months = [date(year, m, 1) for m in range(1, 13)]
        periods = [(_local(m), _local(date(year + m.month // 12, m.month % 12 + 1, 1))) for m in months]
        return {
            "show": True,
            "back": {"link": link({}), "title": "All dates"},
            "choices": [
                {
                    "link": link({year_field: str(year), month_field: str(m.month)}),
                    "title": capfirst(formats.date_format(m, "YEAR_MONTH_FORMAT")),
                }
                for m, has_rows in zip(months, _periods_with_rows(changelist, periods), strict=True)
                if has_rows
            ],
        }
    return {"show": False}


def _periods_with_rows(changelist, periods: list[tuple[datetime, datetime]]) -> list[bool]:
    return selectors.request_log_periods_with_rows(queryset=changelist.queryset, periods=periods)


def _local(day: date) -> datetime:
    """Midnight of the day in the current time zone, as the admin's date lookups read dates."""
    return timezone.make_aware(datetime(day.year, day.month, day.day))


def _int_param(values) -> int | None:
    """The last value of a query parameter as an int (ChangeList keeps lists of strings)."""
    if not values:
        return None
    value = values[-1] if isinstance(values, list) else values
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
