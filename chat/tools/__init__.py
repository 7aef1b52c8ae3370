"""Tools the model can call by function calling (F53): `file_read` and `web_search`.

The registry is built once, at import (F62). The turn engine offers
`tools_for_turn()` (neutral `{name, description, parameters}` definitions, which the
chat.llm providers put on the wire), runs what the model asks for with
`tool_dispatch`, and records each call with `tool_call_build`.
"""

from chat.tools.base import Tool, ToolResult
from chat.tools.registry import (
    REGISTRY,
    tool_arguments_parse,
    tool_call_build,
    tool_definitions,
    tool_dispatch,
    tool_names_available,
    tools_for_turn,
)

__all__ = [
    "REGISTRY",
    "Tool",
    "ToolResult",
    "tool_arguments_parse",
    "tool_call_build",
    "tool_definitions",
    "tool_dispatch",
    "tool_names_available",
    "tools_for_turn",
]
