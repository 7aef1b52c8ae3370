"""/v1 requests carrying a NUL (a client sending back a reply's, a tool result or a
tool's schema) are answered, not failed: stored, counted and sent as U+FFFD
(core.text), through the real `openai` SDK."""

import pytest

from chat.models import Message, Turn

pytestmark = pytest.mark.django_db(transaction=True)

FFFD = "\ufffd"


def test_a_nul_in_a_tool_result_and_a_tool_schema_is_stored_as_a_replacement_character(sdk, fast):
    tool = {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q\x00": {"type": "string"}}}},
    }
    messages = [
        {"role": "user", "content": "Look it up."},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found\x00it"},
    ]  # fmt: skip
    answer = sdk.chat.completions.create(model="fast", messages=messages, tools=[tool])
    assert answer.choices[0].message.content == f"Tool lookup returned: found{FFFD}it"
    assert Message.objects.get(role="tool").content == f"found{FFFD}it"
    turn = Turn.objects.get()
    assert turn.status == "completed"
    assert f"q{FFFD}" in turn.completion_options["tools"][0]["parameters"]["properties"]
