"""The Redis server on 127.0.0.1:6379, for the tests of rate limits in a shared cache.

Used when it answers; in CI (`CI` set, and .ci/run starts Redis) it must answer.
"""

from __future__ import annotations

import os

import pytest
import redis

REDIS_URL = "redis://127.0.0.1:6379"


def redis_answers() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_url_or_skip(database: int) -> str:
    """`redis://127.0.0.1:6379/<database>`, or skip the test (fail it in CI) when Redis does not answer."""
    if not redis_answers():
        message = f"Redis does not answer on {REDIS_URL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return f"{REDIS_URL}/{database}"


def redis_url_if_answering(database: int) -> str | None:
    """`redis://127.0.0.1:6379/<database>` when Redis answers, else None (in CI, a failed test)."""
    if redis_answers():
        return f"{REDIS_URL}/{database}"
    if os.environ.get("CI"):
        pytest.fail(f"Redis does not answer on {REDIS_URL}")
    return None
