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

Only a `\\u` escape can put a NUL or a surrogate in the data (raw, neither is valid
JSON in a string), and a body with at most MAX_DEPTH brackets cannot be too deep: a
body with none of these is returned as parsed, and a walk looks only for what the
text may hold.
"""

import json as stdlib_json
import re
from typing import Any

from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser as DRFJSONParser
from rest_framework.parsers import get_encoding
from rest_framework.utils import json

MAX_DEPTH = 64
NUL = "\x00"
SURROGATE = re.compile("[\ud800-\udfff]")
NUL_ESCAPE = "\\u0000"
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_DECODER = stdlib_json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")

NUL_MESSAGE = "Null characters are not allowed."  # DRF's CharField says the same
SURROGATE_MESSAGE = "Contains a lone surrogate (a \\ud800-\\udfff escape without its pair): not valid Unicode."
DEPTH_MESSAGE = f"Nested deeper than {MAX_DEPTH} levels."


def _shown(key: str) -> str:
    """A key as a path may show it: a lone surrogate escaped (the answer must encode)."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _refuse(path: str, message: str) -> ValidationError:
    return ValidationError({path: [message]} if path else [message])


class _Walk:
    def __init__(self, *, nul: bool, surrogates: bool) -> None:
        self.nul, self.surrogates = nul, surrogates  # what to look for

    def text(self, value: str, path: str) -> None:
        if self.nul and NUL in value:
            raise _refuse(path, NUL_MESSAGE)
        if self.surrogates and not value.isascii() and SURROGATE.search(value):
            raise _refuse(path, SURROGATE_MESSAGE)

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
    """The key of the body's object whose value (which the JSON parser found too deep
    to parse) nests past the bound; "" when the body as a whole does. Each value is
    decoded on its own by the C decoder: as fast as the parse itself."""
    pos, key = _SPACE.match(text).end(), None
    if not text.startswith("{", pos):
        return ""
    pos += 1
    try:
        while True:
            key, pos = _DECODER.raw_decode(text, _SPACE.match(text, pos).end())
            pos = _SPACE.match(text, pos).end() + 1  # past the colon
            _, pos = _DECODER.raw_decode(text, _SPACE.match(text, pos).end())
            pos = _SPACE.match(text, pos).end() + 1  # past the comma
    except RecursionError:
        return _shown(key) if isinstance(key, str) else ""
    except ValueError:  # the end of the object, or not JSON past the deep part
        return ""


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
        # Only an escape can put a NUL or a surrogate in the data (raw, they are not JSON).
        nul = not self.allow_nul and NUL_ESCAPE in text
        surrogates = SURROGATE_ESCAPE.search(text) is not None
        if nul or surrogates or text.count("[") + text.count("{") > MAX_DEPTH:
            _Walk(nul=nul, surrogates=surrogates)(data)
        return data


class NulStorableJSONParser(JSONParser):
    """/v1's: a NUL is stored as U+FFFD by its service (see the module's docstring)."""

    allow_nul = True
