"""Text as the database can store it.

PostgreSQL's text and jsonb cannot hold U+0000 (NUL): an INSERT carrying one fails
the whole transaction. A model's reply, the arguments of a tool call or a tool's
result may contain one all the same (the providers pass it through), so every such
text is stored with each NUL replaced by U+FFFD, the Unicode replacement character:
visibly "a character was here", and never a failed turn. SQLite could keep NUL;
both databases store the same text.
"""

from typing import Any

NUL = "\x00"
REPLACEMENT = "\ufffd"


def storable(value: Any) -> Any:
    """`value` (a string, or JSON data: dicts, lists, strings, numbers) with every NUL,
    in keys too, replaced by U+FFFD; anything else unchanged."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT) if NUL in value else value
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value
