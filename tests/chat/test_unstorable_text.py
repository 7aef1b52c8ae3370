"""Text the database cannot store never gives an answer away (core.text): a NUL in a
reply, in a tool call's arguments or in a tool's result is stored as U+FFFD, and a
finished call whose outcome the database refuses for any other reason is still
charged, once (chat.services.turns.outcome_charge_only). Run on PostgreSQL (CI's
first pass), where a NUL really fails an INSERT, and on SQLite."""

import pytest
from django.core.management import call_command
from django.db import connection

from chat.models import ChatSession, LLMCall, Message, ToolCall
from chat.services.files import file_create
from tests.chat.engine_support import START, balance, cost, debits, fund, post_turn, price_for
from tests.fakes.llm_servers import Reply, ToolUse

pytestmark = pytest.mark.django_db(transaction=True)

FFFD = "\ufffd"


@pytest.fixture
def chat(owner):  # noqa: ANN001, ANN201
    fund(owner)
    price_for("openai", "openai")
    return ChatSession.objects.create(user=owner, model_alias="openai")


def assert_charged_once(owner, amount) -> None:  # noqa: ANN001
    assert [row.amount for row in debits(owner)] == [-amount]
    assert balance(owner) == START - amount
    call_command("reconcile_wallets")  # exits 1 on any drift


def test_a_nul_in_the_reply_is_stored_as_a_replacement_character(owner, owner_client, chat, fake_openai_server):
    fake_openai_server.script(Reply(text="before\x00after", input_tokens=30, output_tokens=5))
    body = post_turn(owner_client, chat, "Say it").data
    assert body["status"] == "completed"
    assert Message.objects.get(role="assistant").content == f"before{FFFD}after"
    assert LLMCall.objects.get().input_tokens == 30
    assert_charged_once(owner, cost(30, 5))


def test_a_nul_in_tool_arguments_and_in_a_tool_result(owner, owner_client, chat, fake_openai_server):
    # Uploads refuse a NUL (binary data); a tool's result carries one when the model
    # names an unknown tool with it (the result repeats the name).
    notes = file_create(owner=owner, name="notes.txt", declared_type="text/plain", data=b"left right")
    fake_openai_server.script(
        Reply(text="", tool_calls=[ToolUse("file_read", {"file_id": notes.pk, "why": "a\x00b"}, id="call_1"),
                                   ToolUse("web\x00search", {"q": "x"}, id="call_2")],
              input_tokens=40, output_tokens=9),
        Reply(text="Read it.", input_tokens=60, output_tokens=3),
    )  # fmt: skip
    body = post_turn(owner_client, chat, "Read my notes").data
    assert body["status"] == "completed", body["error"]
    asked = Message.objects.get(role="assistant", tool_calls__isnull=False)
    assert asked.tool_calls[0]["arguments"]["why"] == f"a{FFFD}b"
    assert asked.tool_calls[1]["name"] == f"web{FFFD}search"
    by_id = {row.tool_call_id: row.content for row in Message.objects.filter(role="tool")}
    assert f"web{FFFD}search" in by_id["call_2"] and "\x00" not in by_id["call_2"]
    tool_calls = {row.tool: row for row in ToolCall.objects.all()}
    assert tool_calls["file_read"].arguments["why"] == f"a{FFFD}b"
    assert f"web{FFFD}search" in tool_calls and f"web{FFFD}search" in tool_calls[f"web{FFFD}search"].result_excerpt
    assert LLMCall.objects.count() == 2
    assert_charged_once(owner, cost(40, 9) + cost(60, 3))


@pytest.fixture
def refusing_database():  # noqa: ANN201
    """A trigger that refuses any message containing REFUSE-ME: the database refusing
    a row of a finished turn for a reason other than being away."""
    table = Message._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION parley_test_refuse() RETURNS trigger AS $$ BEGIN "
                "IF NEW.content LIKE '%REFUSE-ME%' THEN RAISE EXCEPTION 'refused by the test trigger'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER parley_test_refuse BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION parley_test_refuse()"
            )
        else:
            cursor.execute(
                f"CREATE TRIGGER parley_test_refuse BEFORE INSERT ON {table} "
                "WHEN NEW.content LIKE '%REFUSE-ME%' BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
            )
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER parley_test_refuse ON {table}" if connection.vendor == "postgresql"
                       else "DROP TRIGGER parley_test_refuse")  # fmt: skip
        if connection.vendor == "postgresql":
            cursor.execute("DROP FUNCTION parley_test_refuse()")


def test_an_outcome_the_database_refuses_is_still_charged_once(
    owner, owner_client, chat, fake_openai_server, refusing_database
):
    fake_openai_server.script(Reply(text="This will be REFUSE-ME by the database.", input_tokens=25, output_tokens=8))
    body = post_turn(owner_client, chat, "Go").data
    assert body["status"] == "failed" and "could not be stored" in body["error"]
    assert not Message.objects.filter(role="assistant").exists()
    call = LLMCall.objects.get()
    assert (call.input_tokens, call.output_tokens, call.status) == (25, 8, "ok")
    assert len(fake_openai_server.requests) == 1  # the provider was not asked again
    assert_charged_once(owner, cost(25, 8))
