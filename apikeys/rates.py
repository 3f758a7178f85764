"""Rate strings such as `60/min`, as the settings, the admin and the throttle read them."""

from __future__ import annotations

import re

_RATE = re.compile(r"(\d+)/(s|sec|second|m|min|minute|h|hour|d|day)s?")
_PERIOD_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int] | None:
    """`"60/min"` as (60 requests, 60 seconds); an empty string means no limit (None).

    Raises ValueError for anything else, so a typo never silently turns a limit off.
    """
    text = "".join(rate.split()).lower()
    if not text:
        return None
    match = _RATE.fullmatch(text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError("not a rate such as 60/min (a count of at least 1 per s, min, hour or day)")
    return int(match.group(1)), _PERIOD_SECONDS[match.group(2)[0]]
