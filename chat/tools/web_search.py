"""`web_search`: top results from a SearXNG-style JSON endpoint (WEB_SEARCH_URL).

Offered to the model only when WEB_SEARCH_URL is set. The request carries only the
query; neither the query nor the endpoint URL (it may hold a token) is logged or
echoed back to the model."""

import json
import logging
from typing import Any

import requests
from django.conf import settings

from accounts.models import User
from chat.tools.base import Tool, ToolResult

logger = logging.getLogger(__name__)

MAX_RESULTS = 5
SNIPPET_CHARS = 400
RESPONSE_MAX_BYTES = 2 * 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 10.0

PARAMETERS = {
    "type": "object",
    "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 400, "description": "What to search for."}},
    "required": ["query"],
    "additionalProperties": False,
}


def web_search_available() -> bool:
    return bool(settings.WEB_SEARCH_URL)


def _clip(value: Any, limit: int) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _SearchFailed(Exception):
    pass


def _fetch(query: str) -> Any:
    timeout = float(getattr(settings, "WEB_SEARCH_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS))
    with requests.get(
        settings.WEB_SEARCH_URL,
        params={"q": query, "format": "json"},
        headers={"Accept": "application/json"},
        timeout=timeout,
        stream=True,
    ) as response:
        if response.status_code != 200:
            raise _SearchFailed(f"the search service answered HTTP {response.status_code}")
        body = response.raw.read(RESPONSE_MAX_BYTES + 1, decode_content=True)
    if len(body) > RESPONSE_MAX_BYTES:
        raise _SearchFailed("the search service's answer was too large")
    try:
        return json.loads(body)
    except ValueError:
        raise _SearchFailed("the search service's answer was not JSON")


def web_search_run(*, user: User, arguments: dict[str, Any]) -> ToolResult:
    query = " ".join(arguments["query"].split())
    if not query:
        return ToolResult.error("query must not be blank.")
    if not web_search_available():
        return ToolResult.error("Web search is not configured.")
    try:
        payload = _fetch(query)
    except requests.RequestException as exc:
        logger.warning("web_search failed: %s", type(exc).__name__)
        return ToolResult.error(f"Web search failed: the search service could not be reached ({type(exc).__name__}).")
    except _SearchFailed as exc:
        logger.warning("web_search failed: %s", exc)
        return ToolResult.error(f"Web search failed: {exc}.")
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list):
        return ToolResult.error("Web search failed: the search service's answer had no results list.")
    lines: list[str] = []
    for item in (r for r in results if isinstance(r, dict)):
        if len(lines) == MAX_RESULTS:
            break
        title, url = _clip(item.get("title"), 200) or "(untitled)", _clip(item.get("url"), 500)
        entry = f"{len(lines) + 1}. {title}\n   {url}"
        if snippet := _clip(item.get("content"), SNIPPET_CHARS):
            entry += f"\n   {snippet}"
        lines.append(entry)
    if not lines:
        return ToolResult.success(f'No web results for "{query}".')
    return ToolResult.success(f'Web results for "{query}":\n' + "\n".join(lines))


WEB_SEARCH = Tool(
    name="web_search",
    description="Search the web. Returns the top results (title, URL, snippet) for a query.",
    parameters=PARAMETERS,
    run=web_search_run,
    available=web_search_available,
)
