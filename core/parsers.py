"""The JSON parser of every API view (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES, and
openai_api's views): DRF's, refusing what parses but could never be stored or walked.

- A lone surrogate (`"\\ud800"` as a JSON escape): json accepts it, but the text is
  not Unicode; encoding it to UTF-8 (PostgreSQL, Redis, a provider) fails.
- Nesting deeper than MAX_DEPTH: beyond about a thousand levels the JSON parser
  itself raises RecursionError, and every recursive walk of the data (a serializer,
  core.text.storable, the jsonb adapter) would sooner or later.
- A NUL (U+0000) anywhere, in keys too, under /api/: PostgreSQL's text and jsonb
  cannot hold one. /v1 keeps it (`allow_nul`): its service stores a NUL as U+FFFD
  (core.text, chat.services.completions.completion_request_storable), as OpenAI's
  clients send back what a model said.

Each is a 400 naming where it is, as a serializer names a field: the text's path
(`messages[0].content`, `tools[0].function.parameters.description`), or for nesting
the body's field it is under (`tools`); the /api/ handler and openai_api's turn that
into `fields` and `param`. A body nested as a whole (a bare `[[[...]]]`) names none.

A body without `\\u` escapes can hold neither a NUL nor a surrogate (raw control
characters are not valid JSON), and one with at most MAX_DEPTH brackets cannot be too
deep, so most bodies are returned as parsed, without a walk.
"""

import re
from typing import Any

from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser as DRFJSONParser
from rest_framework.parsers import get_encoding
from rest_framework.utils import json

MAX_DEPTH = 64
NUL = "\x00"
SURROGATE = re.compile("[\ud800-\udfff]")
# Tokens that matter for nesting: a string (a key when a colon follows) or a bracket.
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"(\s*:)?|[\[\]{}]')

NUL_MESSAGE = "Null characters are not allowed."  # DRF's CharField says the same
SURROGATE_MESSAGE = "Contains a lone surrogate (a \\ud800-\\udfff escape without its pair): not valid Unicode."
DEPTH_MESSAGE = f"Nested deeper than {MAX_DEPTH} levels."


def _shown(key: str) -> str:
    """A key as a path may show it: a lone surrogate escaped (the answer must encode)."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _refuse(path: str, message: str) -> ValidationError:
    return ValidationError({path: [message]} if path else [message])


class _Walk:
    def __init__(self, *, allow_nul: bool) -> None:
        self.allow_nul = allow_nul

    def text(self, value: str, path: str) -> None:
        if value.isascii():
            if NUL in value and not self.allow_nul:
                raise _refuse(path, NUL_MESSAGE)
        elif SURROGATE.search(value):
            raise _refuse(path, SURROGATE_MESSAGE)
        elif NUL in value and not self.allow_nul:
            raise _refuse(path, NUL_MESSAGE)

    def __call__(self, value: Any, path: str = "", depth: int = 0, top: str = "") -> None:
        """Raises ValidationError naming the first unstorable text (by its path) or
        too deep a value (by the body's key it is under, `top`)."""
        if isinstance(value, str):
            self.text(value, path)
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise _refuse(top, DEPTH_MESSAGE)
            if isinstance(value, list):
                for index, item in enumerate(value):
                    self(item, f"{path}[{index}]", depth + 1, top)
            else:
                for key, item in value.items():
                    name = f"{path}.{_shown(key)}" if path else _shown(key)
                    self.text(key, name)
                    self(item, name, depth + 1, top if depth else name)


def _too_deep_under(text: str) -> str:
    """The top-level key under which `text` (which the JSON parser found too deep to
    parse) nests deeper than MAX_DEPTH; "" when the body as a whole does."""
    depth, key = 0, ""
    for token in TOKEN.finditer(text):
        first = token.group()[0]
        if first in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return key
        elif first in "]}":
            depth -= 1
        elif depth == 1 and token.group(1):  # a key of the body's object
            key = _shown(json.loads(token.group()[: token.start(1) - token.start()]))
    return key


class JSONParser(DRFJSONParser):
    allow_nul = False

    def parse(self, stream, media_type=None, parser_context=None):  # noqa: ANN001, ANN201
        encoding = get_encoding(parser_context or {})
        try:
            text = stream.read().decode(encoding)
            parse_constant = json.strict_constant if self.strict else None
            data = json.loads(text, parse_constant=parse_constant)
        except RecursionError:
            raise _refuse(_too_deep_under(text), DEPTH_MESSAGE) from None
        except ValueError as exc:  # not JSON, or not in the encoding
            raise ParseError(f"JSON parse error - {exc}") from None
        if "\\u" in text or text.count("[") + text.count("{") > MAX_DEPTH:
            _Walk(allow_nul=self.allow_nul)(data)
        return data


class NulStorableJSONParser(JSONParser):
    """/v1's: a NUL is stored as U+FFFD by its service (see the module's docstring)."""

    allow_nul = True
