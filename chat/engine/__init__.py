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

A session of the OpenAI-compatible endpoint (source `openai`) runs none of these:
chat.engine.completion makes its one call on the request's own messages.
"""

import logging
from functools import partial

from billing.models import ModelPrice
from billing.selectors import hold_amount
from chat.engine.completion import completion_outcome
from chat.engine.context import files_prompt_note
from chat.engine.metering import TurnOutcome
from chat.engine.orchestrator import run_orchestrator
from chat.engine.roundtable import run_roundtable
from chat.engine.run import TurnRun
from chat.engine.single import run_single
from chat.engine.summary import summarise
from chat.models import ChatSession, Turn
from chat.tools import tools_for_turn

logger = logging.getLogger(__name__)

MODES = {
    ChatSession.Mode.SINGLE: run_single,
    ChatSession.Mode.ROUNDTABLE: run_roundtable,
    ChatSession.Mode.ORCHESTRATOR: run_orchestrator,
}


def turn_outcome(*, turn: Turn, price: ModelPrice) -> TurnOutcome:
    """Runs `turn` in its session's mode; the outcome is for turn_complete to write.
    A turn of the OpenAI-compatible endpoint is one call on its own messages."""
    if turn.session.source == ChatSession.Source.OPENAI:
        return completion_outcome(turn=turn, price=price)
    note = files_prompt_note(user=turn.user, session=turn.session, membership_id=turn.membership_id)
    tools = [tool for tool in tools_for_turn() if tool["name"] != "file_read" or note]
    hold_of = partial(hold_amount, reference=str(turn.pk))
    run = TurnRun(turn=turn, price=price, tools=tools, files_note=note, hold_of=hold_of)
    summarise(run)
    MODES.get(turn.session.mode, run_single)(run)
    if run.outcome.error:
        logger.info("turn %s failed: %s", turn.pk, run.outcome.error)
    return run.outcome
