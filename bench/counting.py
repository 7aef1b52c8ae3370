"""What counting a prompt costs (chat.llm.counting), per rule.

    .venv/bin/python bench/counting.py [--messages 200] [--chars 400] [--rounds 20]

A turn's context build counts every candidate message of its history (up to
chat.selectors.HISTORY_SCAN = 200) with its price's rule, and a /v1 request counts
its messages and tools at acceptance and again on the worker. This times, in one
process (time.process_time: CPU only), counting a history of MESSAGES messages of
about CHARS characters each (English, CJK, code and emoji mixed, as a real chat
has) with each rule, plus 38 tool definitions (what Open WebUI sends), and prints
the CPU per turn and per KB of prompt. The encodings are loaded before timing
(about 0.4 s once per process).
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

from chat.llm.base import ChatMessage  # noqa: E402
from chat.llm.counting import BYTES, CL100K_BASE, O200K_BASE, count_message, count_tools, encoding  # noqa: E402

WORDS = ["the", "ledger", "balance", "credits", "model", "turn", "Hello,", "world.", "中文", "标记", "😀", "déjà",
         "def f(x):", "return x * 2", "{\"key\": [1, 2, 3]}", "\n", "naïve", "Straße"]  # fmt: skip


def history(messages: int, chars: int, seed: int = 7) -> list[ChatMessage]:
    rng = random.Random(seed)
    made = []
    for n in range(messages):
        text = ""
        while len(text) < chars:
            text += rng.choice(WORDS) + " "
        made.append(ChatMessage(role="user" if n % 2 == 0 else "assistant", content=text))
    return made


def tools(count: int = 38) -> list[dict]:
    return [
        {
            "name": f"tool_{n}",
            "description": "Looks something up for the user and returns what it found, briefly.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"],
            },
        }  # fmt: skip
        for n in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--chars", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    messages, offered = history(args.messages, args.chars), tools()
    size_kb = sum(len(m.content.encode()) for m in messages) / 1024
    tools_kb = len(json.dumps(offered).encode()) / 1024
    for name in (O200K_BASE, CL100K_BASE):
        encoding(name)
    print(f"history: {args.messages} messages, {size_kb:.1f} KB; tools: {len(offered)} definitions, {tools_kb:.1f} KB")
    for rule in (BYTES, O200K_BASE, CL100K_BASE):
        started = time.process_time()
        for _ in range(args.rounds):
            tokens = sum(count_message(message, rule) for message in messages)
        per_turn = (time.process_time() - started) / args.rounds
        started = time.process_time()
        for _ in range(args.rounds):
            tool_tokens = count_tools(offered, rule)
        per_tools = (time.process_time() - started) / args.rounds
        print(
            f"{rule:12} history {tokens:7} tokens {per_turn * 1e3:8.3f} ms ({per_turn * 1e6 / size_kb:7.1f} us/KB); "
            f"tools {tool_tokens:6} tokens {per_tools * 1e3:7.3f} ms"
        )


if __name__ == "__main__":
    main()
