"""`orchestrator` mode: an orchestrator call (function calling, `next_speaker`, see
chat.engine.orchestrator_protocol) picks the next participant or ends, up to
MAX_ORCHESTRATOR_STEPS replies."""

import logging

from django.conf import settings

from billing.selectors import model_price_for_alias
from chat.engine.orchestrator_protocol import (
    NEXT_SPEAKER,
    orchestrator_choice_parse,
    orchestrator_system_prompt,
    orchestrator_tool_definition,
)
from chat.engine.panel import participant_prompt, participants_with_prices, said_by
from chat.engine.run import TurnRun, run_context, system_prompt_for
from chat.engine.tool_loop import answer
from chat.llm import ChatMessage
from chat.models import LLMCall

logger = logging.getLogger(__name__)

ORCHESTRATOR_RETRY = f"Answer only by calling the {NEXT_SPEAKER} function with a participant id, or null to end."


def run_orchestrator(run: TurnRun) -> None:
    session = run.turn.session
    panel = participants_with_prices(run)
    if panel is None:
        return
    orchestrator = model_price_for_alias(alias=session.orchestrator_alias)
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
        context = run_context(run, price=orchestrator, system_prompt=prompt, extra=extra, tools=definition)
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
        text = answer(
            run, price=prices[participant.pk], participant=participant, extra=said,
            system_prompt=system_prompt_for(run, participant_prompt(session, participant)),
        )  # fmt: skip
        if run.outcome.error or text is None:
            return
        said.append(said_by(participant, text))
