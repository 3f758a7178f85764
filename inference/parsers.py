"""The API's one request parser: JSON as RFC 8259 defines it, where every malformed body is a 400."""

from __future__ import annotations

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser
from rest_framework.renderers import JSONRenderer


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class StrictJSONParser(BaseParser):
    """Like DRF's JSONParser, minus two ways a hostile body became a 500 there.

    Deeply nested arrays (`[[[[...`) raise RecursionError, which DRF lets through; and DRF decodes with the
    charset the client declares, where a text codec such as `rot13` fails with a TypeError. Here the bytes
    go to json.loads as they are (UTF-8, or UTF-16/32 detected from the first bytes), NaN and the
    infinities are refused, and every failure is a ParseError.
    """

    media_type = "application/json"
    renderer_class = JSONRenderer

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read()
        try:
            return json.loads(raw, parse_constant=_refuse_constant)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
        except ValueError as error:  # UnicodeDecodeError included
            raise ParseError(f"JSON parse error - {error}") from None
