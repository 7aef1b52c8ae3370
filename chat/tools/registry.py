"""The tool registry, built once at import (F62), and the dispatcher.

The model picks a tool by function calling (F53); `tool_dispatch` runs exactly the
tool it named with the arguments it gave, after validating them against the tool's
JSON Schema. Nothing here looks at the conversation's words to decide on a tool.
"""

import json
import logging
import time
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

from jsonschema.exceptions import best_match

from accounts.models import User
from chat.models import LLMCall, ToolCall, Turn
from chat.tools.base import Tool, ToolResult
from chat.tools.file_read import FILE_READ
from chat.tools.web_search import WEB_SEARCH

logger = logging.getLogger(__name__)

# What goes back to the model, and what the ToolCall row keeps of it.
RESULT_MAX_CHARS = 12_000
EXCERPT_MAX_CHARS = 500

REGISTRY: MappingProxyType[str, Tool] = MappingProxyType({tool.name: tool for tool in (FILE_READ, WEB_SEARCH)})


def tool_names_available() -> list[str]:
    """Registered tools usable right now (web_search needs WEB_SEARCH_URL)."""
    return [name for name, tool in REGISTRY.items() if tool.available()]


def tool_definitions(enabled: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Provider-neutral definitions `{name, description, parameters}` of the available
    tools, optionally narrowed to `enabled`. An unavailable tool is never offered."""
    wanted = None if enabled is None else set(enabled)
    return [REGISTRY[name].definition() for name in tool_names_available() if wanted is None or name in wanted]


def tools_for_turn() -> list[dict[str, Any]]:
    """The definitions a turn offers the model."""
    return tool_definitions()


def tool_arguments_parse(arguments: str | dict[str, Any] | None) -> dict[str, Any] | str:
    """The arguments object from a provider's tool call: OpenAI sends a JSON string,
    Anthropic an object. Returns the object, or a message saying what is wrong."""
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return "arguments are not valid JSON."
    if not isinstance(arguments, dict):
        return "arguments must be a JSON object."
    return arguments


def _finish(result: ToolResult, started: float) -> ToolResult:
    content = result.content
    if len(content) > RESULT_MAX_CHARS:
        content = content[:RESULT_MAX_CHARS] + "\n[truncated]"
    latency_ms = max(0, round((time.monotonic() - started) * 1000))
    return ToolResult(status=result.status, content=content, latency_ms=latency_ms)


def tool_dispatch(
    *, user: User, name: str, arguments: str | dict[str, Any] | None, membership_id: int | None = None
) -> ToolResult:
    """Run the tool the model asked for. Never raises for anything the model sent:
    an unknown tool, unparsable or invalid arguments, or a failing tool give an
    error result the model can read and correct. `membership_id`: the turn's
    organization member, for the tools that read the user's own data."""
    started = time.monotonic()
    tool = REGISTRY.get(name)
    if tool is None or not tool.available():
        known = ", ".join(tool_names_available()) or "none"
        return _finish(ToolResult.error(f"Unknown tool '{name}'. Available tools: {known}."), started)
    parsed = tool_arguments_parse(arguments)
    if isinstance(parsed, str):
        return _finish(ToolResult.error(f"{name}: {parsed}"), started)
    error = best_match(tool.validator.iter_errors(parsed))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path)
        return _finish(
            ToolResult.error(f"{name}: invalid arguments{f' ({where})' if where else ''}: {error.message}"), started
        )
    try:
        result = tool(user=user, arguments=parsed, membership_id=membership_id)
    except Exception:
        # A bug or an outage inside a tool must not fail the whole (paid) turn: the
        # model is told the tool failed, and the traceback goes to the log.
        logger.exception("tool %s raised", name)
        result = ToolResult.error(f"{name} failed unexpectedly.")
    return _finish(result, started)


def tool_call_build(
    *, turn: Turn, llm_call: LLMCall, name: str, arguments: str | dict[str, Any] | None, result: ToolResult
) -> ToolCall:
    """An unsaved ToolCall row for the turn's completion transaction to save."""
    parsed = tool_arguments_parse(arguments)
    stored = parsed if isinstance(parsed, dict) else {"_unparsed": str(arguments)[:1000]}
    return ToolCall(
        turn=turn,
        llm_call=llm_call,
        tool=name[:64],
        arguments=stored,
        result_excerpt=result.content[:EXCERPT_MAX_CHARS],
        status=ToolCall.Status.OK if result.ok else ToolCall.Status.ERROR,
        latency_ms=result.latency_ms,
    )
