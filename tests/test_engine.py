"""The engine on the real tiny model: batching, per-row stopping, backpressure, deadlines, OOM recovery."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import torch
from PIL import Image

from inference.engine import Engine, Job, collect_batch
from inference.errors import ClientDisconnected, OutOfMemory, Overloaded, RequestTimeout, VLMError
from inference.sampling import RowSampling

GREEDY = RowSampling(temperature=0.0, top_p=1.0)


def make_job(row, max_new_tokens=8, sampling=GREEDY, timeout=60.0, on_token=None) -> Job:
    now = time.monotonic()
    return Job(
        row=row,
        sampling=sampling,
        max_new_tokens=max_new_tokens,
        received_at=now,
        preprocess_s=0.0,
        deadline=now + timeout,
        on_token=on_token,
    )


@pytest.fixture(scope="module")
def backend(loaded_model):
    return loaded_model.backend


@pytest.fixture
def engine(backend):
    engine = Engine(backend, max_batch_size=8, batch_wait_s=0.05, max_queue=8)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def rows(backend):
    """A text row, an image row, a video row and a multi-turn row: different lengths and inputs."""
    image = Image.new("RGB", (84, 56), (200, 10, 10))
    frames = [Image.new("RGB", (56, 56), (index * 50, 90, 0)) for index in range(4)]
    conversations = [
        [{"role": "user", "content": "Hello there, how are you today?"}],
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]}],
        [
            {
                "role": "user",
                "content": [
                    {"type": "video", "video": frames, "sample_fps": 2.0, "min_pixels": 3136, "max_pixels": 3136},
                    {"type": "text", "text": "Describe the video."},
                ],
            }
        ],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me more, please."},
        ],
    ]
    return [backend.prepare(conversation) for conversation in conversations]


def test_collect_batch_waits_briefly_for_more_and_caps_the_size():
    jobs: queue.Queue = queue.Queue()
    assert collect_batch(jobs, max_size=4, wait_s=0.01, poll_s=0.01) == []
    for item in range(6):
        jobs.put(item)
    assert collect_batch(jobs, max_size=4, wait_s=0.01) == [0, 1, 2, 3]
    assert collect_batch(jobs, max_size=4, wait_s=0.01) == [4, 5]


def test_collect_batch_ends_early_on_a_wakeup():
    jobs: queue.Queue = queue.Queue()
    for item in (1, None, 2):
        jobs.put(item)
    assert collect_batch(jobs, max_size=8, wait_s=1.0) == [1]
    assert collect_batch(jobs, max_size=8, wait_s=0.0) == [2]


def test_collect_batch_takes_a_late_arrival_within_the_wait():
    jobs: queue.Queue = queue.Queue()
    jobs.put("first")
    threading.Timer(0.05, jobs.put, args=("late",)).start()
    assert collect_batch(jobs, max_size=8, wait_s=0.5) == ["first", "late"]


def test_greedy_rows_in_a_mixed_batch_match_the_same_rows_alone(engine, rows):
    lengths = [9, 5, 12, 3]
    together = [engine.submit(make_job(row, n)) for row, n in zip(rows, lengths, strict=True)]
    batched = [job.result() for job in together]
    assert {result.batch_size for result in batched} == {4}
    for row, n, result in zip(rows, lengths, batched, strict=True):
        alone = engine.submit(make_job(row, n)).result()
        assert alone.batch_size == 1
        assert result.token_ids == alone.token_ids
        assert result.output_tokens == n
        assert result.finish_reason == "length"


def test_a_short_row_returns_before_its_batch_ends(engine, rows):
    finished_at = {}
    short, long = make_job(rows[0], 2), make_job(rows[0], 60)
    for name, job in (("short", short), ("long", long)):
        job.future.add_done_callback(lambda _, name=name: finished_at.setdefault(name, time.monotonic()))
        engine.submit(job)
    assert short.result().output_tokens == 2
    assert long.result().output_tokens == 60
    assert short.result().batch_size == 2
    assert finished_at["short"] < finished_at["long"]
    assert short.result().timings.total_s < long.result().timings.total_s / 2


def test_tokens_stream_to_the_callback_as_generated(engine, rows):
    streamed: list[int] = []
    result = engine.submit(make_job(rows[1], 6, on_token=streamed.append)).result()
    assert streamed == result.token_ids
    timings = result.timings
    assert 0 < timings.ttft_s <= timings.total_s
    assert timings.decode_s > 0


def test_sampled_rows_keep_their_own_settings(engine, rows):
    sampled = make_job(
        rows[0], 16, RowSampling(temperature=1.5, top_p=0.95, generator=torch.Generator().manual_seed(1))
    )
    greedy = make_job(rows[0], 16)
    engine.submit(sampled), engine.submit(greedy)
    alone = engine.submit(make_job(rows[0], 16)).result()
    assert greedy.result().token_ids == alone.token_ids
    assert sampled.result().token_ids != alone.token_ids  # flat random-weight logits: sampling wanders


def test_full_queue_is_refused_at_once(backend, rows):
    stalled = Engine(backend, max_queue=2)  # never started: nothing leaves the queue
    stalled.submit(make_job(rows[0])), stalled.submit(make_job(rows[0]))
    started = time.monotonic()
    with pytest.raises(Overloaded):
        stalled.check_capacity()
    with pytest.raises(Overloaded):
        stalled.submit(make_job(rows[0]))
    assert time.monotonic() - started < 0.05


def test_cancelled_and_expired_jobs_never_reach_the_model(engine, rows, monkeypatch):
    calls = []
    original = engine.backend.prefill
    monkeypatch.setattr(engine.backend, "prefill", lambda *a, **k: calls.append(1) or original(*a, **k))
    cancelled, expired = make_job(rows[0]), make_job(rows[0], timeout=-1)
    cancelled.cancel()
    engine.submit(cancelled), engine.submit(expired)
    with pytest.raises(ClientDisconnected):
        cancelled.future.result(timeout=5)
    with pytest.raises(RequestTimeout):
        expired.result()
    assert calls == []


def test_waiting_past_the_deadline_times_out_and_cancels(engine, rows):
    job = make_job(rows[0], 400, timeout=0.3)
    engine.submit(job)
    with pytest.raises(RequestTimeout):
        job.result()
    assert job.cancelled.is_set()
    # The row is stopped at its next token, and the engine serves the next request.
    assert engine.submit(make_job(rows[0], 2)).result().output_tokens == 2


def test_a_request_joins_a_batch_that_is_already_decoding(engine, rows):
    long = engine.submit(make_job(rows[0], 80))
    streamed = threading.Event()
    long.on_token = lambda token: streamed.set()
    assert streamed.wait(10)
    late = engine.submit(make_job(rows[1], 3))
    assert late.result().output_tokens == 3
    assert not long.future.done()  # it joined the running batch instead of waiting for it to end
    assert late.result().batch_size == 2
    assert long.result().output_tokens == 80


def test_out_of_memory_in_a_prefill_retries_in_smaller_ones(engine, rows, monkeypatch):
    original = engine.backend.prefill
    sizes = []

    def prefill_that_fits_one_row(batch_rows):
        sizes.append(len(batch_rows))
        if len(batch_rows) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(batch_rows)

    monkeypatch.setattr(engine.backend, "prefill", prefill_that_fits_one_row)
    jobs = [engine.submit(make_job(row, 4)) for row in rows]  # within the 50 ms collection window
    assert [job.result().output_tokens for job in jobs] == [4, 4, 4, 4]
    assert sizes[0] == 4 and max(sizes[1:]) < 4


def test_out_of_memory_in_a_decode_step_restarts_the_rows(engine, rows, monkeypatch):
    original = engine.backend.decode_step
    failures = []

    def decode_step_failing_once(state):
        if not failures and state.size > 1:
            failures.append(state.size)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return original(state)

    monkeypatch.setattr(engine.backend, "decode_step", decode_step_failing_once)
    jobs = [engine.submit(make_job(row, 5)) for row in rows[:2]]
    alone = [engine.submit(make_job(row, 5)).result().token_ids for row in rows[:2]]
    assert failures and [job.result().token_ids for job in jobs] == alone


def test_a_row_that_fails_alone_gets_oom_and_the_engine_keeps_serving(engine, rows, monkeypatch):
    original = engine.backend.prefill

    def always_oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(engine.backend, "prefill", always_oom)
    with pytest.raises(OutOfMemory):
        engine.submit(make_job(rows[0], 4)).result()
    monkeypatch.setattr(engine.backend, "prefill", original)
    assert engine.submit(make_job(rows[0], 4)).result().output_tokens == 4


def test_maintenance_runs_on_the_worker_between_model_steps(engine, rows, monkeypatch):
    original = engine.backend.decode_step
    in_forward = threading.Event()

    def tracked_step(state):
        in_forward.set()
        try:
            return original(state)
        finally:
            in_forward.clear()

    monkeypatch.setattr(engine.backend, "decode_step", tracked_step)
    running = engine.submit(make_job(rows[0], 40))
    while not running.token_ids:
        time.sleep(0.001)
    seen = engine.run_between_batches(lambda: (threading.current_thread().name, in_forward.is_set()))
    assert seen == ("vlm-engine", False)
    assert running.result().output_tokens == 40


def test_rows_that_all_sample_are_served(engine, rows):
    jobs = [engine.submit(make_job(row, 6, RowSampling(temperature=0.7, top_p=0.9))) for row in rows]
    assert [job.result().output_tokens for job in jobs] == [6, 6, 6, 6]


def test_an_unexpected_error_fails_the_running_rows_and_the_worker_survives(engine, rows, monkeypatch):
    original = engine.backend.decode_step
    monkeypatch.setattr(engine.backend, "decode_step", lambda state: 1 / 0)
    with pytest.raises(VLMError):
        engine.submit(make_job(rows[0], 5)).result()
    monkeypatch.setattr(engine.backend, "decode_step", original)
    assert engine.submit(make_job(rows[0], 5)).result().output_tokens == 5


def test_a_bug_while_rows_join_fails_them_instead_of_leaving_them_waiting(engine, rows, monkeypatch):
    def broken_sampler(logits, sampling):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr("inference.engine.select_next_tokens", broken_sampler)
    job = engine.submit(make_job(rows[0], 5, timeout=30))
    with pytest.raises(VLMError):
        job.future.result(timeout=10)
    monkeypatch.undo()
    assert engine.submit(make_job(rows[0], 5)).result().output_tokens == 5
