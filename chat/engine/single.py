"""`single` mode: one reply, with the tool loop."""

from chat.engine.run import TurnRun, system_prompt_for
from chat.engine.tool_loop import answer


def run_single(run: TurnRun) -> None:
    answer(run, price=run.price, system_prompt=system_prompt_for(run, run.turn.session.system_prompt), extra=[])
