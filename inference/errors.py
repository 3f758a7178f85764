"""Domain errors, raised where they happen; the one table that maps them to HTTP.

Django-free on purpose: the engine and the media loader raise these too. Each error
carries its HTTP status, a default detail, and a short `reason` used as the metrics
label (`vlm_request_failure_total{reason}`) and in the request log. The DRF exception
handler in `inference.exception_handler` turns them into `{"detail": ...}` bodies.
"""

from __future__ import annotations


class VLMError(Exception):
    status_code = 500
    default_detail = "Internal server error."
    reason = "internal"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.default_detail
        super().__init__(self.detail)


class InvalidRequest(VLMError):
    """The request itself is wrong: shape, ranges, unknown roles or content types."""

    status_code = 400
    default_detail = "Invalid request."
    reason = "validation"


class MediaError(InvalidRequest):
    """An image or video could not be used: refused by policy, unreachable, or undecodable.

    `media_reason` says why in one word (for `vlm_media_rejected_total{reason}`):
    scheme, address, domain, path, too_large, timeout, fetch, decode, too_many, dimensions.
    """

    default_detail = "Invalid media."
    reason = "media"

    def __init__(self, detail: str | None = None, *, media_reason: str = "decode") -> None:
        super().__init__(detail)
        self.media_reason = media_reason


class ModelNotFound(VLMError):
    """A request named a model this server does not serve (OpenAI's `model`; vLLM answers 404 too)."""

    status_code = 404
    default_detail = "The model does not exist."
    reason = "model_not_found"


class ModelNotReady(VLMError):
    status_code = 503
    default_detail = "Model is not loaded."
    reason = "not_loaded"


class Overloaded(VLMError):
    status_code = 503
    default_detail = "Server is overloaded: the request queue is full. Retry later."
    reason = "overloaded"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class OutOfMemory(VLMError):
    status_code = 503
    default_detail = "Out of GPU memory while generating; retry with a shorter input or fewer tokens."
    reason = "oom"


class RequestTimeout(VLMError):
    status_code = 504
    default_detail = "The request did not finish before its deadline."
    reason = "timeout"


class ClientDisconnected(VLMError):
    """The client went away; nobody reads the answer. 499 as nginx logs it."""

    status_code = 499
    default_detail = "Client closed the request."
    reason = "cancelled"
