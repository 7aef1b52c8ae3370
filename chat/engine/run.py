"""One run of a turn: what it has produced so far, what it may still spend (the
ceiling check before every call after the first), and the context of its calls,
read once per run."""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property

from billing.models import ModelPrice
from chat import leases
from chat.engine.context import ContextRows, TurnContext, context_build, context_rows
from chat.engine.metering import TurnOutcome, attempts_error, call_bound, llm_call_run
from chat.engine.orchestrator_protocol import NEXT_SPEAKER
from chat.llm import STOPPED_BY_OWNER, ChatMessage, LLMResult
from chat.llm.counting import count_tools
from chat.models import LLMCall, Participant, Turn

logger = logging.getLogger(__name__)


@dataclass
class TurnRun:
    """One run of a turn: what it has produced so far, and what it may still spend."""

    turn: Turn
    price: ModelPrice
    tools: list[dict]
    files_note: str
    # Reads the turn's hold (see `ceiling`).
    hold_of: Callable[[], Decimal | None]
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

    @cached_property
    def ceiling(self) -> Decimal | None:
        """The turn's hold: no call after the first starts unless it fits (None: no
        hold). Read when first asked: a turn of one call never asks."""
        return self.hold_of()

    def affordable(self, *, price: ModelPrice, context: TurnContext, tools: list[dict] | None,
                   reserve: Decimal = Decimal("0"), exempt_first: bool = True) -> bool:  # fmt: skip
        if leases.stop_requested(self.turn.pk):
            # Cancelled (or this run lost its lease): no further call starts.
            self.outcome.cancelled = self.outcome.cancelled or not leases.lease_lost(self.turn.pk)
            return False
        # The turn's first reply is what every hold covers (H2's single-turn rule).
        if (exempt_first and self.calls_made == 0) or self.ceiling is None:
            return True
        worst = call_bound(price=price, input_tokens=context.input_tokens + count_tools(tools, price.counting))
        if self.spent + worst + reserve <= self.ceiling:
            return True
        logger.info("turn %s stops: its next call could cost more than its hold", self.turn.pk)
        return False

    def call(self, *, price: ModelPrice, context: TurnContext, purpose: str, tools: list[dict] | None = None,
             stream: bool = True, participant: Participant | None = None) -> LLMResult | None:  # fmt: skip
        result, llm_calls = llm_call_run(
            turn=self.turn, price=price, context=context, purpose=purpose, tools=tools or None, stream=stream,
            participant=participant,
        )  # fmt: skip
        for llm_call in llm_calls:
            if self.used_fallback and purpose != LLMCall.Purpose.SUMMARY:
                llm_call.used_fallback = True
            self.spent += llm_call.cost if llm_call.billed else Decimal("0")
        self.calls_made += 1
        self.outcome.llm_calls.extend(llm_calls)
        if result is None and not self.outcome.error:
            self.outcome.error = attempts_error(llm_calls)
        elif result is not None and result.partial:
            # What came is kept and charged; the turn ends here, cancelled by its owner
            # or failed with the provider's cut.
            if result.partial == STOPPED_BY_OWNER:
                self.outcome.cancelled = True
            elif not self.outcome.error:
                self.outcome.error = result.partial
        return result


def system_prompt_for(run: TurnRun, base: str) -> str:
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


def run_context(run: TurnRun, *, price: ModelPrice, system_prompt: str, extra: list[ChatMessage],
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
        turn=run.turn, price=price, system_prompt=system_prompt, extra=extra,
        reserved_tokens=count_tools(tools, price.counting), rows=run.rows,
    )  # fmt: skip
    if run.outcome.prior_messages is None:
        run.outcome.prior_messages = context.own_rows
    if not tools or any(tool["name"] == NEXT_SPEAKER for tool in tools):
        context.messages = _strip_tool_traffic(context.messages)
    if key is not None:
        run.last_context = (key, context)
    return context
