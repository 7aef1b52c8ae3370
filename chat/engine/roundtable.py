"""`roundtable` mode: every participant answers in position order, each seeing the
user message and the replies before it (its own system prompt and alias)."""

from chat.engine.panel import participant_prompt, participants_with_prices, said_by
from chat.engine.run import TurnRun, system_prompt_for
from chat.engine.tool_loop import answer
from chat.llm import ChatMessage


def run_roundtable(run: TurnRun) -> None:
    panel = participants_with_prices(run)
    said: list[ChatMessage] = []
    for participant, price in panel or ():
        prompt = system_prompt_for(run, participant_prompt(run.turn.session, participant))
        text = answer(run, price=price, system_prompt=prompt, extra=said, participant=participant)
        if run.outcome.error or text is None:
            return
        said.append(said_by(participant, text))
