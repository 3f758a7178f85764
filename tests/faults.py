"""Fault injection for streaming tests: the real backend, failing part-way through a generation."""

from __future__ import annotations

from inference.runtime import runtime


def fail_generation_after(monkeypatch, steps: int) -> None:
    """The loaded backend runs `steps` decode steps (a token each, after the prefill's first), then
    raises, as a lost device would."""
    original = runtime.backend.decode_step
    calls = 0

    def failing_decode_step(state):
        nonlocal calls
        calls += 1
        if calls > steps:
            raise RuntimeError("device lost")
        return original(state)

    monkeypatch.setattr(runtime.backend, "decode_step", failing_decode_step)


def count_decode_steps(monkeypatch):
    """Count the loaded backend's decode steps; returns `() -> steps so far`."""
    original = runtime.backend.decode_step
    calls = 0

    def counting_decode_step(state):
        nonlocal calls
        calls += 1
        return original(state)

    monkeypatch.setattr(runtime.backend, "decode_step", counting_decode_step)
    return lambda: calls
