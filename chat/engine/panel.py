"""What the multi-participant modes (round table, orchestrator) share: the panel with
its prices, each participant's prompt, and earlier replies as the next speaker sees
them."""

from billing.models import ModelPrice
from billing.selectors import model_price_for_alias
from chat.engine.run import TurnRun
from chat.llm import ChatMessage
from chat.models import ChatSession, Participant
from chat.selectors import participants_for_session


def said_by(participant: Participant, text: str) -> ChatMessage:
    """An earlier reply of this turn as the next speaker sees it: named."""
    return ChatMessage(role="assistant", content=f"{participant.name}: {text}")


def participant_prompt(session: ChatSession, participant: Participant) -> str:
    intro = f"You are {participant.name}, one of several participants answering the user in turn."
    return "\n\n".join(part for part in (intro, participant.system_prompt or session.system_prompt) if part)


def participants_with_prices(run: TurnRun) -> list[tuple[Participant, ModelPrice]] | None:
    panel = []
    for participant in participants_for_session(session=run.turn.session):
        price = model_price_for_alias(alias=participant.model_alias)
        if price is None:
            run.outcome.error = f"Participant '{participant.name}' has no active model alias."
            return None
        panel.append((participant, price))
    return panel
