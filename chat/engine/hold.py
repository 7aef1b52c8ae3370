"""The hold: a turn's worst-case cost, placed when the turn is accepted. Every call
after the turn's first is checked against it (chat.engine.run), so a turn cannot
spend more than it holds."""

from decimal import Decimal

from django.conf import settings

from billing.models import ModelPrice
from billing.selectors import model_price_for_alias
from chat.engine.context import head_messages, input_budget
from chat.engine.metering import call_bound, window_bound
from chat.llm import ChatMessage
from chat.llm.counting import MESSAGE_FRAMING_TOKENS, count_prompt
from chat.models import ChatSession
from chat.selectors import participants_for_session, session_history_size, user_has_files
from chat.tools import tools_for_turn
from core.exceptions import StateConflict, field_error


def _tools_offered(*, user_id: int, membership_id: int | None = None) -> bool:
    names = {tool["name"] for tool in tools_for_turn()}
    if "web_search" in names:
        return True
    return "file_read" in names and user_has_files(user_id=user_id, membership_id=membership_id)


def turn_hold_amount(*, session: ChatSession, price: ModelPrice, content: str) -> Decimal:
    """The worst-case cost of a turn, held when it is accepted:

    - a reply call: the prompt counted with the alias's rule (system prompt, summary,
      the new message, and the history up to the input budget, which the context
      builder counts by the same rule) plus max_output_tokens (H2's single-turn rule);
    - with tools offered, each of the MAX_TOOL_ROUNDS follow-up calls a full window
      (input budget + max output) of its alias;
    - round table: every participant's calls, each a full window of its alias;
    - orchestrator: MAX_ORCHESTRATOR_STEPS + 1 orchestrator calls (one retry of an
      invalid answer) plus MAX_ORCHESTRATOR_STEPS replies of the dearest participant;
    - a summary call (a full window of the turn's alias) when the history does not fit.

    Raises 400 naming `content` when the message alone does not fit the alias, and
    422 when a participant's alias is no longer active."""
    budget = input_budget(price)
    needed, history = _prompt_tokens(session=session, price=price, content=content)
    if needed > budget:
        raise field_error(
            "content",
            f"Too long for model alias '{price.alias}': {needed} tokens with the system prompt, "
            f"its input limit is {budget}.",
        )
    summary = window_bound(price) if needed + history > budget else Decimal("0")
    tool_calls = settings.MAX_TOOL_ROUNDS if _tools_offered(user_id=session.user_id, membership_id=session.membership_id) else 0

    if session.mode == ChatSession.Mode.SINGLE:
        first = call_bound(price=price, input_tokens=min(budget, needed + history))
        if tool_calls:
            first = window_bound(price)  # tool definitions and the files note come on top of the estimate
        return first + tool_calls * window_bound(price) + summary

    per_participant = []
    for participant in participants_for_session(session=session):
        participant_price = model_price_for_alias(alias=participant.model_alias)
        if participant_price is None:
            raise StateConflict(
                f"Participant '{participant.name}' uses '{participant.model_alias}', which is no longer an active "
                "model alias; change the participant first."
            )
        per_participant.append((1 + tool_calls) * window_bound(participant_price))
    if session.mode == ChatSession.Mode.ROUNDTABLE:
        return sum(per_participant, Decimal("0")) + summary
    orchestrator = model_price_for_alias(alias=session.orchestrator_alias)
    if orchestrator is None:
        raise StateConflict(f"The orchestrator alias '{session.orchestrator_alias}' is not an active model alias.")
    steps = settings.MAX_ORCHESTRATOR_STEPS
    return (steps + 1) * window_bound(orchestrator) + steps * max(per_participant, default=Decimal("0")) + summary


def turn_token_estimate(*, session: ChatSession, price: ModelPrice, content: str) -> int:
    """The tokens a turn is counted for against an API key's `tpm`
    (accounts.rate_limits), at acceptance: its first call's worst case, the prompt
    (system prompt, history within the input budget, the new message) plus the
    alias's max_output_tokens. Further calls of the turn (tools, a round table) are
    not estimated: tpm paces requests, the budget bounds what they cost."""
    needed, history = _prompt_tokens(session=session, price=price, content=content)
    return min(input_budget(price), needed + history) + price.max_output_tokens


def _prompt_tokens(*, session: ChatSession, price: ModelPrice, content: str) -> tuple[int, int]:
    """A turn's first prompt in tokens of the alias's rule: (what it must hold: system
    prompt, summary and the new message, counted; the session's history on top of
    that, bounded by its UTF-8 bytes, which no rule's count exceeds)."""
    asked = [*head_messages(session=session), ChatMessage(role="user", content=content)]
    needed = count_prompt(asked, price.counting)
    count, size = session_history_size(session=session)
    return needed, count * MESSAGE_FRAMING_TOKENS + size
