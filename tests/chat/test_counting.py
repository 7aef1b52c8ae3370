"""Counting rules (chat.llm.counting): the encodings are tiktoken's own, loaded from
the installed package; `bytes` never counts fewer tokens than a byte-level tokenizer;
a prompt's count covers every part of every message and every tool."""

import json

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.llm import ChatMessage, ToolCallRequest
from chat.llm.counting import (
    BYTES,
    CL100K_BASE,
    MESSAGE_FRAMING_TOKENS,
    O200K_BASE,
    REPLY_FRAMING_TOKENS,
    TOOL_CALL_FRAMING_TOKENS,
    TOOL_FRAMING_TOKENS,
    TOOLS_FRAMING_TOKENS,
    count_output,
    count_prompt,
    count_text,
    encoding,
    encoding_file,
)

SAMPLES = ["Hello, world!", "中文的标记比英文多得多。", "def f(x):\n    return x ** 2  # 😀", "ǅ\u0301\u200d👩‍👩‍👧", ""]


@pytest.mark.parametrize("name", [O200K_BASE, CL100K_BASE])
def test_the_encodings_are_tiktokens_own(name, monkeypatch):
    """tiktoken's own constructor, its download answered from the package's file (the
    network patched, nothing else), encodes exactly as ours does."""
    monkeypatch.setattr(tiktoken.load, "read_file", lambda blobpath: encoding_file(name))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache: the patched read answers
    from tiktoken_ext import openai_public

    theirs = tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())
    ours = encoding(name)
    assert (ours._pat_str, ours._special_tokens, ours.n_vocab) == (
        theirs._pat_str,
        theirs._special_tokens,
        theirs.n_vocab,
    )
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text)


def test_known_counts():
    assert count_text("Hello, world!", O200K_BASE) == 4
    assert count_text("Hello, world!", CL100K_BASE) == 4
    assert count_text("中文", BYTES) == 6 and count_text("😀", BYTES) == 4
    assert count_text("", O200K_BASE) == 0
    # Special-token text is plain text, never refused.
    assert count_text("<|endoftext|>", O200K_BASE) > 1


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bytes_bounds_every_byte_level_tokenizer(text):
    # Every token of o200k_base and cl100k_base is at least one byte.
    assert count_text(text, BYTES) >= max(count_text(text, O200K_BASE), count_text(text, CL100K_BASE))


def test_a_prompt_counts_every_part_with_its_framing():
    call = ToolCallRequest(id="call_1", name="web_search", arguments={"query": "中文"})
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="assistant", content="", tool_calls=(call,)),
        ChatMessage(role="tool", content="résultat", tool_call_id="call_1", name="web_search"),
    ]
    tools = [{"name": "web_search", "description": "Search.", "parameters": {"type": "object"}}]
    expected = (
        REPLY_FRAMING_TOKENS
        + 3 * MESSAGE_FRAMING_TOKENS
        + TOOL_CALL_FRAMING_TOKENS
        + len(b"Be brief.")
        + len(b"call_1") + len(b"web_search") + len(json.dumps({"query": "中文"}, ensure_ascii=False).encode())
        + len("résultat".encode()) + len(b"call_1")
        + TOOLS_FRAMING_TOKENS + TOOL_FRAMING_TOKENS + len(json.dumps(tools[0]).encode())
    )  # fmt: skip
    assert count_prompt(messages, BYTES, tools) == expected
    # Without tools, no tool framing.
    assert count_prompt(messages, BYTES) == expected - TOOLS_FRAMING_TOKENS - TOOL_FRAMING_TOKENS - len(
        json.dumps(tools[0]).encode()
    )


def test_output_counts_text_tool_calls_and_what_was_not_kept():
    call = ToolCallRequest.from_raw(id="c", name="f", raw='{"a": 1}')
    assert count_output(text="hi", tool_calls=(call,), extra="thinking", rule=BYTES) == 2 + 1 + 1 + 8 + 8
