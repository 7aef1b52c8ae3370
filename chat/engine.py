"""The turn engine: what running a turn produces, one function per session mode.

    single        one reply, with the tool loop
    roundtable    every participant answers in position order, each seeing the user
                  message and the replies before it (its own system prompt and alias)
    orchestrator  an orchestrator call (function calling, `next_speaker`) picks the
                  next participant or ends, up to MAX_ORCHESTRATOR_STEPS replies

Each produces an in-memory `TurnOutcome` (messages, LLM calls, tool calls, a new
session summary); chat.services.turn_complete writes it in ONE transaction with one
debit. Provider calls and tools run here, outside any transaction.

The tool loop (F53): the model is offered `tools_for_turn()` (file_read only when
the user has files, web_search only when configured) and asks by function calling;
each requested tool runs through `tool_dispatch` and its result goes back. At most
MAX_TOOL_ROUNDS rounds of tools run: when the model still asks for tools after
that, the turn ends with what it said (no further call), and the unanswered
requests are not stored, so later contexts stay valid for every provider.

Spending ceiling: the hold placed when the turn was accepted (`turn_hold_amount`,
a documented bound per mode) is the most the turn may cost. Every call after the
turn's first is checked before it starts: spent so far plus that call's worst case
(its prompt estimate plus max_output_tokens) must stay within the hold, else the
turn ends with what was said. So in `block` mode a turn cannot overspend, even when
participants, files or the mode changed after it was accepted.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from billing.models import CreditHold, ModelPrice
from billing.money import call_cost, ledger_amount, usage_amount
from chat import streaming
from chat.context import (
    HISTORY_SCAN,
    ContextRows,
    TurnContext,
    context_build,
    context_rows,
    head_messages,
    input_budget,
)
from chat.files import files_prompt_note, user_has_files
from chat.llm import ChatMessage, LLMResult, ProviderError, estimate_prompt_tokens, estimate_tokens, provider_for
from chat.llm.base import CHARS_PER_TOKEN, MESSAGE_OVERHEAD_TOKENS
from chat.models import ChatSession, LLMCall, Message, Participant, ToolCall, Turn
from chat.participants import (
    NEXT_SPEAKER,
    orchestrator_choice_parse,
    orchestrator_system_prompt,
    orchestrator_tool_definition,
    participants_for_session,
)
from chat.selectors import price_active, session_history_size
from chat.tools import tool_call_build, tool_dispatch, tools_for_turn
from core.exceptions import StateConflict, field_error

logger = logging.getLogger(__name__)

SUMMARY_PROMPT = (
    "Summarise the conversation below for your own later reference: keep facts, decisions, names, numbers "
    "and open questions; drop pleasantries. Write plain prose, no preamble."
)
ORCHESTRATOR_RETRY = f"Answer only by calling the {NEXT_SPEAKER} function with a participant id, or null to end."


# --- the outcome -------------------------------------------------------------------


@dataclass
class TurnOutcome:
    """What running a turn produced, unsaved, for `turn_complete` to write at once.
    `error` set means the turn failed (calls with usage are still charged)."""

    messages: list[Message] = field(default_factory=list)
    llm_calls: list[LLMCall] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    error: str = ""
    # The turn's messages stored before it ran (its question), when already read;
    # they complete the turn published with `done`.
    prior_messages: list[Message] | None = None
    # A new rolling summary: (text, id of the newest message it covers).
    summary: tuple[str, int] | None = None


def llm_call_build(
    *,
    price: ModelPrice,
    purpose: str,
    latency_ms: int,
    result: LLMResult | None = None,
    error: str = "",
    used_fallback: bool = False,
) -> LLMCall:
    """An unsaved LLMCall metered at `price`. A failed call (no result) has no usage
    and costs nothing."""
    tokens_in = result.input_tokens if result else 0
    tokens_out = result.output_tokens if result else 0
    exact = call_cost(
        input_tokens=tokens_in, output_tokens=tokens_out,
        input_price=price.input_credits_per_mtok, output_price=price.output_credits_per_mtok,
    )  # fmt: skip
    return LLMCall(
        price=price, purpose=purpose, model_alias=price.alias, provider=price.provider,
        provider_model=price.provider_model, input_tokens=tokens_in, output_tokens=tokens_out,
        cost=ledger_amount(exact), credits_burned=usage_amount(exact), latency_ms=latency_ms,
        status=LLMCall.Status.OK if result else LLMCall.Status.FAILED, error=error[:500],
        used_fallback=used_fallback,
    )  # fmt: skip


def llm_call_run(
    *,
    turn: Turn,
    price: ModelPrice,
    context: TurnContext | list[ChatMessage],
    purpose: str = LLMCall.Purpose.REPLY,
    tools: list[dict] | None = None,
    stream: bool = True,
    participant: Participant | None = None,
) -> tuple[LLMResult | None, LLMCall]:
    """One metered provider call for `turn`: (result or None when it failed for good,
    the unsaved LLMCall). Streams the reply to the turn's channel when there is one,
    with the participant's id and name in a round table."""
    messages = context.messages if isinstance(context, TurnContext) else context
    on_delta = None
    if stream and streaming.enabled():
        turn_id = turn.pk
        who = {"participant": participant.pk, "participant_name": participant.name} if participant else {}

        def on_delta(text: str) -> None:
            streaming.publish(turn_id, "delta", {"text": text, **who})

    started = time.monotonic()
    try:
        result = provider_for(price.provider).complete(
            model=price.provider_model, messages=messages, max_output_tokens=price.max_output_tokens,
            tools=tools, on_delta=on_delta,
        )  # fmt: skip
    except ProviderError as exc:
        latency = round((time.monotonic() - started) * 1000)
        return None, llm_call_build(price=price, purpose=purpose, latency_ms=latency, error=exc.message)
    latency = round((time.monotonic() - started) * 1000)
    return result, llm_call_build(price=price, purpose=purpose, latency_ms=latency, result=result)


# --- bounds: the hold and the per-call ceiling check ---------------------------------


def tools_tokens(tools: list[dict] | None) -> int:
    """What offering `tools` adds to a prompt (the local provider counts exactly this)."""
    return estimate_tokens(json.dumps(list(tools))) if tools else 0


def call_bound(*, price: ModelPrice, input_tokens: int) -> Decimal:
    return ledger_amount(
        call_cost(
            input_tokens=input_tokens, output_tokens=price.max_output_tokens,
            input_price=price.input_credits_per_mtok, output_price=price.output_credits_per_mtok,
        )
    )  # fmt: skip


def window_bound(price: ModelPrice) -> Decimal:
    """The most one call on `price` can cost: a full input budget plus max output
    (context_build never sends more than the budget)."""
    return call_bound(price=price, input_tokens=input_budget(price))


def _tools_offered(*, user_id: int) -> bool:
    names = {tool["name"] for tool in tools_for_turn()}
    if "web_search" in names:
        return True
    return "file_read" in names and user_has_files(user_id=user_id)


def turn_hold_amount(*, session: ChatSession, price: ModelPrice, content: str) -> Decimal:
    """The worst-case cost of a turn, held when it is accepted (SPEC 5.1):

    - a reply call: the prompt estimate (system prompt, summary, history up to the
      input budget, the new message) plus max_output_tokens (H2's single-turn rule);
    - with tools offered, each of the MAX_TOOL_ROUNDS follow-up calls a full window
      (input budget + max output) of its alias;
    - round table: every participant's calls, each a full window of its alias;
    - orchestrator: MAX_ORCHESTRATOR_STEPS + 1 orchestrator calls (one retry of an
      invalid answer) plus MAX_ORCHESTRATOR_STEPS replies of the dearest participant;
    - a summary call (a full window of the turn's alias) when the history does not fit.

    Raises 400 naming `content` when the message alone does not fit the alias, and
    422 when a participant's alias is no longer active."""
    budget = input_budget(price)
    needed = estimate_prompt_tokens(head_messages(session=session)) + MESSAGE_OVERHEAD_TOKENS + estimate_tokens(content)
    if needed > budget:
        raise field_error(
            "content",
            f"Too long for model alias '{price.alias}': about {needed} tokens with the system prompt, "
            f"its input limit is {budget}.",
        )
    count, chars = session_history_size(session=session, before_message_id=None, scan=HISTORY_SCAN)
    # Per message the estimate rounds up, so this adds at most one token per message.
    history = count * (MESSAGE_OVERHEAD_TOKENS + 1) + -(-chars // CHARS_PER_TOKEN)
    summary = window_bound(price) if needed + history > budget else Decimal("0")
    tool_calls = settings.MAX_TOOL_ROUNDS if _tools_offered(user_id=session.user_id) else 0

    if session.mode == ChatSession.Mode.SINGLE:
        first = call_bound(price=price, input_tokens=min(budget, needed + history))
        if tool_calls:
            first = window_bound(price)  # tool definitions and the files note come on top of the estimate
        return first + tool_calls * window_bound(price) + summary

    per_participant = []
    for participant in participants_for_session(session=session):
        participant_price = price_active(alias=participant.model_alias)
        if participant_price is None:
            raise StateConflict(
                f"Participant '{participant.name}' uses '{participant.model_alias}', which is no longer an active "
                "model alias; change the participant first."
            )
        per_participant.append((1 + tool_calls) * window_bound(participant_price))
    if session.mode == ChatSession.Mode.ROUNDTABLE:
        return sum(per_participant, Decimal("0")) + summary
    orchestrator = price_active(alias=session.orchestrator_alias)
    if orchestrator is None:
        raise StateConflict(f"The orchestrator alias '{session.orchestrator_alias}' is not an active model alias.")
    steps = settings.MAX_ORCHESTRATOR_STEPS
    return (steps + 1) * window_bound(orchestrator) + steps * max(per_participant, default=Decimal("0")) + summary


# --- running a turn ------------------------------------------------------------------


@dataclass
class TurnRun:
    """One run of a turn: what it has produced so far, and what it may still spend."""

    turn: Turn
    price: ModelPrice
    tools: list[dict]
    files_note: str
    # The turn's hold: no call after the first starts unless it fits (None: no hold).
    ceiling: Decimal | None
    outcome: TurnOutcome = field(default_factory=TurnOutcome)
    spent: Decimal = Decimal("0")
    calls_made: int = 0
    # The history was truncated because its summary failed (F51).
    used_fallback: bool = False
    # context_rows() of this run, and the summary boundary it was read with.
    rows: ContextRows | None = None
    rows_through: int | None = None
    # The last context built without extra messages, and what it was built for.
    last_context: tuple[tuple, TurnContext] | None = None

    def affordable(self, *, price: ModelPrice, context: TurnContext, tools: list[dict] | None,
                   reserve: Decimal = Decimal("0"), exempt_first: bool = True) -> bool:  # fmt: skip
        # The turn's first reply is what every hold covers (H2's single-turn rule).
        if (exempt_first and self.calls_made == 0) or self.ceiling is None:
            return True
        worst = call_bound(price=price, input_tokens=context.input_tokens + tools_tokens(tools))
        if self.spent + worst + reserve <= self.ceiling:
            return True
        logger.info("turn %s stops: its next call could cost more than its hold", self.turn.pk)
        return False

    def call(self, *, price: ModelPrice, context: TurnContext, purpose: str, tools: list[dict] | None = None,
             stream: bool = True, participant: Participant | None = None) -> LLMResult | None:  # fmt: skip
        result, llm_call = llm_call_run(
            turn=self.turn, price=price, context=context, purpose=purpose, tools=tools or None, stream=stream,
            participant=participant,
        )  # fmt: skip
        if self.used_fallback and purpose != LLMCall.Purpose.SUMMARY:
            llm_call.used_fallback = True
        self.calls_made += 1
        self.spent += llm_call.cost if llm_call.status == LLMCall.Status.OK else Decimal("0")
        self.outcome.llm_calls.append(llm_call)
        if result is None and not self.outcome.error:
            self.outcome.error = llm_call.error
        return result


def _system_prompt(run: TurnRun, base: str) -> str:
    return "\n\n".join(part for part in (base, run.files_note) if part)


def _strip_tool_traffic(messages: list[ChatMessage]) -> list[ChatMessage]:
    """A call offered no tools must not carry earlier tool calls and results (the
    Anthropic API refuses tool blocks without tool definitions)."""
    plain = []
    for message in messages:
        if message.role == "tool":
            continue
        if message.tool_calls:
            if not message.content:
                continue
            message = ChatMessage(role=message.role, content=message.content)
        plain.append(message)
    return plain


def _context(run: TurnRun, *, price: ModelPrice, system_prompt: str, extra: list[ChatMessage],
             tools: list[dict] | None) -> TurnContext:  # fmt: skip
    # Nothing is stored while a turn runs, so one read serves all its calls; a new
    # summary (it moves the history's start) reads again.
    through = run.turn.session.summary_through_message_id
    if run.rows is None or run.rows_through != through:
        run.rows, run.rows_through = context_rows(turn=run.turn), through
    # The summary check and the first reply ask for the same context: build it once.
    key = (price.pk, system_prompt, through) if not extra and tools is run.tools else None
    if key is not None and run.last_context is not None and run.last_context[0] == key:
        return run.last_context[1]
    context = context_build(
        turn=run.turn, price=price, system_prompt=system_prompt, extra=extra, reserved_tokens=tools_tokens(tools),
        rows=run.rows,
    )  # fmt: skip
    if run.outcome.prior_messages is None:
        run.outcome.prior_messages = context.own_rows
    if not tools or any(tool["name"] == NEXT_SPEAKER for tool in tools):
        context.messages = _strip_tool_traffic(context.messages)
    if key is not None:
        run.last_context = (key, context)
    return context


def _answer(
    run: TurnRun, *, price: ModelPrice, system_prompt: str, extra: list[ChatMessage],
    participant: Participant | None = None,
) -> str | None:  # fmt: skip
    """One speaker's answer with the tool loop. Appends its messages, calls and tool
    calls to the outcome; returns its final text, or None when nothing was said."""
    loop: list[ChatMessage] = []  # this answer's tool requests and results, not yet stored
    tools = run.tools
    for round_number in range(settings.MAX_TOOL_ROUNDS + 1):
        context = _context(run, price=price, system_prompt=system_prompt, extra=[*extra, *loop], tools=tools)
        if not run.affordable(price=price, context=context, tools=tools):
            return None
        purpose = LLMCall.Purpose.REPLY if round_number == 0 else LLMCall.Purpose.TOOL_FOLLOWUP
        result = run.call(price=price, context=context, purpose=purpose, tools=tools, participant=participant)
        if result is None:
            return None
        llm_call = run.outcome.llm_calls[-1]
        requests = result.tool_calls if tools else ()
        if requests and round_number == settings.MAX_TOOL_ROUNDS:
            # The limit: the requests are not run, and not stored (they would have no result).
            logger.info("turn %s reached the tool-round limit (%s)", run.turn.pk, settings.MAX_TOOL_ROUNDS)
            text = result.text or f"[Stopped: the limit of {settings.MAX_TOOL_ROUNDS} tool rounds was reached.]"
            run.outcome.messages.append(Message(role=Message.Role.ASSISTANT, content=text, participant=participant))
            return text
        run.outcome.messages.append(
            Message(
                role=Message.Role.ASSISTANT, content=result.text, participant=participant,
                tool_calls=[c.as_dict() for c in requests] or None,
            )
        )  # fmt: skip
        if not requests:
            return result.text
        loop.append(ChatMessage(role="assistant", content=result.text, tool_calls=tuple(requests)))
        for request in requests:
            # Outside any transaction: a slow search holds no lock.
            outcome = tool_dispatch(user=run.turn.user, name=request.name, arguments=request.raw_arguments)
            run.outcome.tool_calls.append(
                tool_call_build(
                    turn=run.turn, llm_call=llm_call, name=request.name, arguments=request.raw_arguments,
                    result=outcome,
                )
            )  # fmt: skip
            run.outcome.messages.append(
                Message(role=Message.Role.TOOL, content=outcome.content, tool_call_id=request.id,
                        participant=participant)
            )  # fmt: skip
            loop.append(ChatMessage(role="tool", content=outcome.content, tool_call_id=request.id, name=request.name))
    return None  # not reached: the last round always returns


def _said(participant: Participant, text: str) -> ChatMessage:
    """An earlier reply of this turn as the next speaker sees it: named."""
    return ChatMessage(role="assistant", content=f"{participant.name}: {text}")


def _participant_prompt(session: ChatSession, participant: Participant) -> str:
    intro = f"You are {participant.name}, one of several participants answering the user in turn."
    return "\n\n".join(part for part in (intro, participant.system_prompt or session.system_prompt) if part)


def _participants_with_prices(run: TurnRun) -> list[tuple[Participant, ModelPrice]] | None:
    panel = []
    for participant in participants_for_session(session=run.turn.session):
        price = price_active(alias=participant.model_alias)
        if price is None:
            run.outcome.error = f"Participant '{participant.name}' has no active model alias."
            return None
        panel.append((participant, price))
    return panel


def _run_single(run: TurnRun) -> None:
    _answer(run, price=run.price, system_prompt=_system_prompt(run, run.turn.session.system_prompt), extra=[])


def _run_roundtable(run: TurnRun) -> None:
    panel = _participants_with_prices(run)
    said: list[ChatMessage] = []
    for participant, price in panel or ():
        prompt = _system_prompt(run, _participant_prompt(run.turn.session, participant))
        text = _answer(run, price=price, system_prompt=prompt, extra=said, participant=participant)
        if run.outcome.error or text is None:
            return
        said.append(_said(participant, text))


def _run_orchestrator(run: TurnRun) -> None:
    session = run.turn.session
    panel = _participants_with_prices(run)
    if panel is None:
        return
    orchestrator = price_active(alias=session.orchestrator_alias)
    if orchestrator is None:
        run.outcome.error = f"The orchestrator alias '{session.orchestrator_alias}' is not an active model alias."
        return
    participants = [participant for participant, _ in panel]
    prices = {participant.pk: price for participant, price in panel}
    definition = [orchestrator_tool_definition(participants=participants)]
    prompt = orchestrator_system_prompt(session=session, participants=participants)
    said: list[ChatMessage] = []
    # One second chance per turn for an unusable answer (the hold counts one extra call).
    retries_left, remind = 1, False
    while len(said) < settings.MAX_ORCHESTRATOR_STEPS:
        extra = [*said, ChatMessage(role="user", content=ORCHESTRATOR_RETRY)] if remind else said
        context = _context(run, price=orchestrator, system_prompt=prompt, extra=extra, tools=definition)
        if not run.affordable(price=orchestrator, context=context, tools=definition):
            return
        result = run.call(
            price=orchestrator, context=context, purpose=LLMCall.Purpose.ORCHESTRATE, tools=definition, stream=False
        )
        if result is None:
            if said:  # what was said stands; a failed coordinator call is not billed
                run.outcome.error = ""
            return
        request = next((c for c in result.tool_calls if c.name == NEXT_SPEAKER), None)
        if request is None:
            choice_error = f"it did not call {NEXT_SPEAKER}"
            choice = None
        else:
            choice = orchestrator_choice_parse(participants=participants, arguments=request.raw_arguments)
            choice_error = choice.error
        if choice_error:
            logger.warning("turn %s: unusable orchestrator answer (%s)", run.turn.pk, choice_error)
            if not retries_left:
                return  # a second unusable answer ends the turn with what was said
            retries_left, remind = retries_left - 1, True
            continue
        remind = False
        if choice.participant is None:
            return
        participant = choice.participant
        text = _answer(
            run, price=prices[participant.pk], participant=participant, extra=said,
            system_prompt=_system_prompt(run, _participant_prompt(session, participant)),
        )  # fmt: skip
        if run.outcome.error or text is None:
            return
        said.append(_said(participant, text))


# --- summaries ------------------------------------------------------------------


def _summarise(run: TurnRun) -> None:
    """When the history does not fit the turn alias's budget, fold the messages that
    no longer fit into the session's rolling summary with a metered `summary` call.
    If that call fails, the context falls back to truncation (F51: `used_fallback`
    on the calls, and a warning in the log)."""
    session, price = run.turn.session, run.price
    context = _context(run, price=price, system_prompt=_system_prompt(run, session.system_prompt), extra=[],
                       tools=run.tools)  # fmt: skip
    if context.dropped == 0:
        return
    first_own = run.outcome.prior_messages[0].id if run.outcome.prior_messages else None
    oldest_kept = context.history_ids[0] if context.history_ids else first_own
    older = Message.objects.filter(session=session, turn__status=Turn.Status.COMPLETED)
    if oldest_kept is not None:
        older = older.filter(id__lt=oldest_kept)
    if session.summary_through_message_id:
        older = older.filter(id__gt=session.summary_through_message_id)
    rows = list(older.exclude(role=Message.Role.TOOL).order_by("-id").values("id", "role", "content")[:HISTORY_SCAN])
    if not rows:
        return
    # The newest of the dropped messages that fit one summary call's input.
    room = input_budget(price) - 2 * MESSAGE_OVERHEAD_TOKENS - estimate_tokens(SUMMARY_PROMPT + session.summary) - 16
    lines: list[str] = []
    for row in rows:
        line = f"{row['role']}: {row['content']}"
        if estimate_tokens("\n".join([line, *lines])) > room:
            break
        lines.insert(0, line)
    previous = f"Summary so far:\n{session.summary}\n\n" if session.summary else ""
    messages = [
        ChatMessage(role="system", content=SUMMARY_PROMPT),
        ChatMessage(role="user", content=f"{previous}Conversation:\n" + "\n".join(lines)),
    ]
    summary_context = TurnContext(messages=messages, input_tokens=estimate_prompt_tokens(messages))
    # Keep a full window for the reply that follows.
    if not run.affordable(
        price=price, context=summary_context, tools=None, reserve=window_bound(price), exempt_first=False
    ):
        return
    result = run.call(price=price, context=summary_context, purpose=LLMCall.Purpose.SUMMARY, stream=False)
    if result is None or not result.text.strip():
        run.outcome.error = ""  # the turn goes on, on a truncated history
        run.outcome.llm_calls[-1].used_fallback = True
        run.used_fallback = True
        logger.warning("turn %s: summary call failed; the context falls back to truncation", run.turn.pk)
        return
    session.summary, session.summary_through_message_id = result.text.strip(), rows[0]["id"]
    run.outcome.summary = (session.summary, rows[0]["id"])


# --- entry point ----------------------------------------------------------------


MODES = {
    ChatSession.Mode.SINGLE: _run_single,
    ChatSession.Mode.ROUNDTABLE: _run_roundtable,
    ChatSession.Mode.ORCHESTRATOR: _run_orchestrator,
}


def turn_outcome(*, turn: Turn, price: ModelPrice) -> TurnOutcome:
    """Runs `turn` in its session's mode; the outcome is for turn_complete to write."""
    note = files_prompt_note(user=turn.user, session=turn.session)
    tools = [tool for tool in tools_for_turn() if tool["name"] != "file_read" or note]
    hold = CreditHold.objects.filter(reference=str(turn.pk)).values_list("amount", flat=True).first()
    run = TurnRun(turn=turn, price=price, tools=tools, files_note=note, ceiling=hold)
    _summarise(run)
    MODES.get(turn.session.mode, _run_single)(run)
    if run.outcome.error:
        logger.info("turn %s failed: %s", turn.pk, run.outcome.error)
    return run.outcome


__all__ = [
    "TurnOutcome",
    "llm_call_build",
    "llm_call_run",
    "turn_hold_amount",
    "turn_outcome",
    "window_bound",
]
