"""The orchestrator protocol. The orchestrator call decides by function calling, like
the tools (F53): it is offered one function, `next_speaker`, whose argument can only
be one of the session's participant ids or null (end the turn). The definition has
the neutral shape chat.llm providers take as `tools`; the model's arguments go to
`orchestrator_choice_parse`."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chat.models import ChatSession, Participant

NEXT_SPEAKER = "next_speaker"


@dataclass(frozen=True)
class OrchestratorChoice:
    participant: Participant | None  # None: the orchestrator ends the turn
    reason: str = ""
    error: str = ""  # set when the model's answer was unusable (the turn then ends)


def orchestrator_tool_definition(*, participants: Sequence[Participant]) -> dict[str, Any]:
    ids: list[int | None] = [p.pk for p in participants]
    return {
        "name": NEXT_SPEAKER,
        "description": "Choose which participant speaks next, or null when the user's request is fully answered.",
        "parameters": {
            "type": "object",
            "properties": {
                "participant_id": {"type": ["integer", "null"], "enum": [*ids, None]},
                "reason": {"type": "string", "maxLength": 500, "description": "One sentence: why."},
            },
            "required": ["participant_id"],
            "additionalProperties": False,
        },
    }


def orchestrator_system_prompt(*, session: ChatSession, participants: Sequence[Participant]) -> str:
    roster = "\n".join(
        f"- id {p.pk}: {p.name}" + (f" ({' '.join(p.system_prompt.split())[:200]})" if p.system_prompt else "")
        for p in participants
    )
    return (
        "You coordinate a panel answering the user. After each reply, call the "
        f"{NEXT_SPEAKER} function to pick who speaks next, or pass null when the answer is complete. "
        f"Do not pick the same participant twice in a row without a reason.\nParticipants:\n{roster}"
    )


def orchestrator_choice_parse(
    *, participants: Sequence[Participant], arguments: str | dict[str, Any] | None
) -> OrchestratorChoice:
    """The orchestrator's decision from its `next_speaker` arguments (a JSON string from
    OpenAI, an object from Anthropic). Anything unusable ends the turn, with `error` set."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            return OrchestratorChoice(participant=None, error="arguments are not valid JSON")
    if not isinstance(arguments, dict) or "participant_id" not in arguments:
        return OrchestratorChoice(participant=None, error="participant_id is missing")
    reason = " ".join(str(arguments.get("reason") or "").split())[:500]
    chosen = arguments["participant_id"]
    if chosen is None:
        return OrchestratorChoice(participant=None, reason=reason)
    by_id = {p.pk: p for p in participants}
    if isinstance(chosen, bool) or not isinstance(chosen, int | float) or chosen not in by_id:
        return OrchestratorChoice(participant=None, reason=reason, error=f"no participant with id {chosen!r}")
    return OrchestratorChoice(participant=by_id[int(chosen)], reason=reason)
