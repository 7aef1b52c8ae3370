"""A turn's outcome kept outside the database until it is written.

When the completion transaction fails (the database went away), the worker keeps
what the run produced here, in Redis, before it retries: provider calls that
returned are never made again for the turn. Whichever run writes the turn next (the
same worker's retry, or the worker that takes the turn over once its lease runs
out) writes this outcome instead of running the turn again, and drops it after the
commit.

The rows go through Django's JSON serializer (no pickle: nothing read back from
Redis can run code); a tool call names its LLM call by position, since neither has
a primary key yet.
"""

import json
import logging
from uuid import UUID

from django.core import serializers

from chat import streaming
from chat.engine.metering import TurnOutcome

logger = logging.getLogger(__name__)

# Long enough for any outage the sweep must outlive; an outcome never written by
# then is lost (the turn was failed by the sweep long before: TURN_MAX_ATTEMPTS).
KEEP_SECONDS = 7 * 24 * 3600


def _key(turn_id: UUID | str) -> str:
    return f"parley:outcome:{turn_id}"


def _dump(outcome: TurnOutcome) -> str:
    position = {id(call): n for n, call in enumerate(outcome.llm_calls)}
    return json.dumps(
        {
            "messages": serializers.serialize("json", outcome.messages),
            "llm_calls": serializers.serialize("json", outcome.llm_calls),
            "tool_calls": serializers.serialize("json", outcome.tool_calls),
            "tool_call_llm_call": [position[id(tool_call.llm_call)] for tool_call in outcome.tool_calls],
            "error": outcome.error,
            "cancelled": outcome.cancelled,
            "summary": list(outcome.summary) if outcome.summary else None,
        }
    )


def _load(text: str) -> TurnOutcome:
    data = json.loads(text)

    def rows(name: str) -> list:
        return [item.object for item in serializers.deserialize("json", data[name])]

    llm_calls = rows("llm_calls")
    tool_calls = rows("tool_calls")
    for tool_call, n in zip(tool_calls, data["tool_call_llm_call"], strict=True):
        tool_call.llm_call = llm_calls[n]
    summary = data["summary"]
    return TurnOutcome(
        messages=rows("messages"), llm_calls=llm_calls, tool_calls=tool_calls, error=data["error"],
        cancelled=data["cancelled"], summary=(summary[0], summary[1]) if summary else None,
    )  # fmt: skip


def outcome_keep(turn_id: UUID | str, outcome: TurnOutcome) -> bool:
    """True once kept; False without Redis, or when Redis is down too (logged)."""
    if not streaming.enabled():
        return False
    try:
        streaming.client().set(_key(turn_id), _dump(outcome), ex=KEEP_SECONDS)
    except Exception:
        logger.exception("could not keep the outcome of turn %s; a takeover would run it again", turn_id)
        return False
    return True


def outcome_kept(turn_id: UUID | str) -> TurnOutcome | None:
    if not streaming.enabled():
        return None
    text = streaming.client().get(_key(turn_id))
    return _load(text) if text else None


def outcome_drop(turn_id: UUID | str) -> None:
    if not streaming.enabled():
        return
    try:
        streaming.client().delete(_key(turn_id))
    except Exception:
        logger.warning("could not drop the kept outcome of turn %s (it expires by itself)", turn_id)
