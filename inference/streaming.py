"""Streaming: token ids to text deltas as they are generated, OpenAI stop strings, Server-Sent Events.

Two halves meet in a `TextStream`. On the engine's worker thread, `on_token` turns each token id into
the text it adds (incremental detokenization: a token can end in the middle of a UTF-8 character, so
text is released only once it decodes cleanly), cuts it at a stop string, and queues it. On the
request's thread, `deltas()` hands the queued text out until the job ends. Stop strings are matched
on the worker so the row ends on the very token that completed one (the engine's `on_token` returning
True); text that could be the start of a stop string is held back until it is known not to be one.

`SseEvents` is the HTTP body of a streamed generation, for both APIs (the spec's events and OpenAI's
chunks differ only in their `StreamFormat`). Errors before the first byte keep their status codes
because everything that can fail early (validation, capacity, media, prepare, submit) runs before the
view returns; what fails later becomes a final error event and the request log row's status.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from django.http import StreamingHttpResponse
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation

from .engine import GenerationResult, Job
from .errors import ClientDisconnected, RequestTimeout, VLMError

logger = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"  # what decode gives for bytes that do not (yet) form a character
_END = object()  # queued after the job's last text: it has ended, in success or failure


class IncrementalDetokenizer:
    """Text deltas from token ids one at a time, the way TGI and vLLM do it: decode a short window of
    recent tokens with and without the newest one and release the difference, unless the window ends
    in an incomplete character. Concatenated, the deltas are the decode of all the tokens."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._tokens: list[int] = []
        self._prefix_offset = 0  # window start: context so that merges across tokens decode right
        self._read_offset = 0  # tokens before this are released as text

    def push(self, token_id: int) -> str:
        self._tokens.append(token_id)
        released = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        window = self._decode(self._tokens[self._prefix_offset :])
        if len(window) <= len(released) or window.endswith(_REPLACEMENT):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._tokens)
        return window[len(released) :]


class StopMatcher:
    """Releases text up to the first stop string. Text that could begin a stop string is held back
    until the next text shows it does not (OpenAI and vLLM never stream part of a stop string)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self.text = ""  # everything seen; once a stop matched, the text before it
        self.released = 0  # characters of `text` handed out so far
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """The part of `text` (with what was held back) that is safe to release now."""
        if self.matched is not None:
            return ""
        self.text += text
        found = [(index, stop) for stop in self._stops if (index := self.text.find(stop, self.released)) >= 0]
        if found:
            index, self.matched = min(found)
            self.text = self.text[:index]
        releasable = len(self.text) if self.matched is not None else len(self.text) - self._held_back()
        delta = self.text[self.released : releasable]
        self.released = releasable
        return delta

    def _held_back(self) -> int:
        """Length of the longest unreleased tail that is a proper prefix of some stop string."""
        pending = len(self.text) - self.released
        for length in range(min(pending, max((len(stop) - 1 for stop in self._stops), default=0)), 0, -1):
            tail = self.text[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0


class TextStream:
    """A job's text as it is generated: fed on the worker (`on_token`), read on the request thread."""

    def __init__(self, decode: Callable[[Sequence[int]], str], *, stop: Sequence[str] = ()) -> None:
        self._detokenizer = IncrementalDetokenizer(decode)
        self._matcher = StopMatcher(stop)
        self._pending: queue.Queue = queue.Queue()

    def attach(self, job: Job) -> None:
        """Listen to `job` (before it is submitted): its tokens, and its end, whatever the outcome."""
        job.on_token = self.on_token
        # Done callbacks run on the thread that completes the future (the worker), after the last
        # on_token: the end marker is always queued behind the job's last text.
        job.future.add_done_callback(lambda _future: self._pending.put(_END))

    def on_token(self, token_id: int) -> bool:
        """Worker thread: queue the text this token adds; True when a stop string is complete."""
        delta = self._matcher.feed(self._detokenizer.push(token_id))
        if delta:
            self._pending.put(delta)
        return self._matcher.matched is not None

    def final(self, result: GenerationResult) -> GenerationResult:
        """The job's result with its text cut before the stop string that ended it, if one did."""
        if self._matcher.matched is None:
            return result
        return dataclasses.replace(result, text=self._matcher.text)

    def deltas(self, job: Job, *, client_gone: Callable[[], bool] | None = None, poll_s: float = 0.25) -> Iterator[str]:
        """Text deltas until the job ends, then the rest of its final text (what was held back).

        Returns the final result (StopIteration.value); raises the job's error, RequestTimeout at its
        deadline, or ClientDisconnected when `client_gone()` says so (both cancel the job).
        """
        while True:
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                job.cancel()
                raise RequestTimeout()
            try:
                item = self._pending.get(timeout=min(remaining, poll_s))
            except queue.Empty:
                if client_gone is not None and client_gone():
                    job.cancel()
                    raise ClientDisconnected() from None
                continue
            if item is _END:
                break
            yield item
        result = self.final(job.future.result())
        released = self._matcher.text[: self._matcher.released]
        if result.text.startswith(released) and len(result.text) > len(released):
            yield result.text[len(released) :]
        elif not result.text.startswith(released):
            logger.warning("request %s: streamed text is not a prefix of the decoded answer", job.request_id)
        return result


# --- Server-Sent Events -----------------------------------------------------------------------


def sse_event(data: dict | str, *, event: str | None = None) -> bytes:
    """One SSE event: an optional `event:` line and one `data:` line (compact JSON, or a plain string)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


class StreamFormat(Protocol):
    """How one API writes a streamed generation: the spec's events, or OpenAI's chunks."""

    def opening(self) -> Iterable[bytes]: ...

    def delta(self, text: str) -> bytes: ...

    def closing(self, result: GenerationResult) -> Iterable[bytes]: ...

    def failure(self, error: VLMError) -> Iterable[bytes]: ...


class SseEvents:
    """The body of a streamed response. The WSGI server iterates it and always calls `close()`; a
    client that went away shows up as a failed write, after which the server closes us mid-stream: the
    job is cancelled and the request recorded as 499 "cancelled". The request log row itself is written
    by RequestLogMiddleware once the server is done with the body."""

    def __init__(self, *, record, deltas: Iterator[str], job: Job, stream_format: StreamFormat) -> None:
        self._record = record
        self._deltas = deltas
        self._job = job
        self._format = stream_format
        self._finished = False
        self._events = self._generate()

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def _generate(self) -> Iterator[bytes]:
        try:
            yield from self._format.opening()
            for text in self._deltas:
                yield self._format.delta(text)
            yield from self._format.closing(self._record.result)
        except ClientDisconnected as error:
            record_failure(self._record, error)  # noticed while waiting; nobody reads an error event
        except VLMError as error:
            record_failure(self._record, error)
            yield from self._format.failure(error)
        except Exception as error:
            logger.exception("streaming request %s failed", self._record.request_id)
            self._job.cancel()
            record_failure(self._record, VLMError(), detail=f"{type(error).__name__}: {error}")
            yield from self._format.failure(VLMError())
        self._finished = True

    def close(self) -> None:
        self._events.close()
        if not self._finished:
            self._finished = True
            self._job.cancel()
            record_failure(self._record, ClientDisconnected())


def record_failure(record, error: VLMError, *, detail: str | None = None) -> None:
    """A failure after the response started: the request log row gets the status it would have had."""
    record.status_code = error.status_code
    record.error_reason = error.reason
    record.error_detail = detail or error.detail


def sse_response(events: SseEvents) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    # nginx buffers proxied responses unless told otherwise; events must reach the client as they come.
    response["X-Accel-Buffering"] = "no"
    return response


class EventStreamNegotiation(DefaultContentNegotiation):
    """For views that may stream: a client that accepts only `text/event-stream` (as SSE clients say)
    still gets JSON for everything that is not the stream itself, errors included, instead of 406."""

    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type
