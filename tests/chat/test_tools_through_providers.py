"""The registry's definitions go out through the real `openai` and `anthropic` SDKs
(H2's provider layer, against the fake model servers), the model's tool call comes
back, `tool_dispatch` runs exactly what it asked for, and the result goes back."""

import pytest

from chat.engine.orchestrator_protocol import orchestrator_tool_definition
from chat.llm import ChatMessage, provider_for
from chat.selectors import participants_for_session
from chat.services.files import file_create
from chat.services.participants import participant_create
from chat.tools import tool_dispatch, tools_for_turn
from tests.fakes.llm_servers import Reply, ToolUse

pytestmark = pytest.mark.django_db

QUESTION = [ChatMessage(role="system", content="Use tools."), ChatMessage(role="user", content="What is in my file?")]


def wire_tools(provider: str) -> list[dict]:
    if provider == "openai":
        return [{"type": "function", "function": d} for d in tools_for_turn()]
    return [
        {"name": d["name"], "description": d["description"], "input_schema": d["parameters"]} for d in tools_for_turn()
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_file_read_round_trip_through_a_provider(request, owner, other_user, settings, provider, stream, searxng):
    server = request.getfixturevalue(f"fake_{provider}_server")
    mine = file_create(owner=owner, name="plan.md", declared_type="text/markdown", data=b"# Plan\nShip it on Friday.")
    theirs = file_create(owner=other_user, name="secret.txt", declared_type="text/plain", data=b"other user's secret")
    server.script(
        Reply(text="", tool_calls=[
            ToolUse("file_read", {"file_id": mine.id, "offset": 7, "limit": 100}, id="call_1"),
            ToolUse("file_read", {"file_id": theirs.id}, id="call_2"),
            ToolUse("web_search", {"query": "friday shipping"}, id="call_3"),
        ]),
        Reply(text="Your plan says to ship on Friday."),
    )  # fmt: skip
    searxng.results = [{"title": "Shipping", "url": "https://example.org/ship", "content": "Friday is fine."}]
    llm = provider_for(provider)
    pieces: list[str] = []
    on_delta = pieces.append if stream else None

    first = llm.complete(model="m", messages=QUESTION, max_output_tokens=64, tools=tools_for_turn(), on_delta=on_delta)

    assert server.requests[0].body["tools"] == wire_tools(provider)
    assert [(c.name, c.arguments) for c in first.tool_calls] == [
        ("file_read", {"file_id": mine.id, "offset": 7, "limit": 100}),
        ("file_read", {"file_id": theirs.id}),
        ("web_search", {"query": "friday shipping"}),
    ]
    results = [tool_dispatch(user=owner, name=c.name, arguments=c.raw_arguments) for c in first.tool_calls]
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert results[0].content.endswith("Ship it on Friday.")
    assert "secret" not in results[1].content
    assert "1. Shipping" in results[2].content
    assert searxng.queries == ["friday shipping"]

    follow_up = [
        *QUESTION,
        ChatMessage(role="assistant", content="", tool_calls=first.tool_calls),
        *(
            ChatMessage(role="tool", content=r.content, tool_call_id=c.id, name=c.name)
            for c, r in zip(first.tool_calls, results, strict=True)
        ),
    ]
    second = llm.complete(
        model="m", messages=follow_up, max_output_tokens=64, tools=tools_for_turn(), on_delta=on_delta
    )
    assert second.text == "Your plan says to ship on Friday."
    sent = str(server.requests[1].body["messages"])
    assert "Ship it on Friday." in sent
    assert "No file with id" in sent


def test_web_search_is_not_sent_to_the_model_when_unset(settings, fake_openai_server):
    settings.WEB_SEARCH_URL = ""
    provider_for("openai").complete(model="m", messages=QUESTION, max_output_tokens=16, tools=tools_for_turn())
    assert [t["function"]["name"] for t in fake_openai_server.requests[0].body["tools"]] == ["file_read"]


def test_orchestrator_definition_goes_through_anthropic(panel_session, fake_anthropic_server):
    participant_create(session=panel_session, name="Critic", model_alias="fast")
    panel = list(participants_for_session(session=panel_session))
    definition = orchestrator_tool_definition(participants=panel)
    fake_anthropic_server.script(Reply(text="", tool_calls=[ToolUse("next_speaker", {"participant_id": panel[0].id})]))

    result = provider_for("anthropic").complete(model="m", messages=QUESTION, max_output_tokens=16, tools=[definition])

    assert fake_anthropic_server.requests[0].body["tools"][0]["input_schema"] == definition["parameters"]
    assert result.tool_calls[0].arguments == {"participant_id": panel[0].id}
