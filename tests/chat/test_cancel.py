"""POST turns/{id}/cancel, the Stop button, and streams the provider cut short: what
the model produced is kept and billed (output counted from the text when no usage
came), the rest of the hold is released, and the stream ends with `done` carrying
the status. The running cases use the real worker (PostgreSQL + Redis)."""

import io
import json

import pytest
from django.core.management import call_command

from billing.models import CreditHold, CreditTransaction
from chat.models import ChatSession, LLMCall, Message, Turn
from tests.chat.conftest import (
    START_BALANCE,
    expected_cost,
    make_price,
    parked,
    post_turn,
    wait_for,
    wallet_of,
)
from tests.chat.engine_support import fund, panel, price_for
from tests.chat.sse import SyncStream
from tests.conftest import client_for
from tests.fakes.llm_servers import CutStream

LONG_QUESTION = " ".join(f"word{n}" for n in range(60))  # 15 streamed pieces of 4 words


def _events(stream: SyncStream):  # noqa: ANN202  an iterator of (name, data)
    buffer = ""
    for chunk in stream:
        buffer += chunk.decode()
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            lines = [line for line in block.splitlines() if not line.startswith(":")]
            if lines:
                yield lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))


def _cancel(client, turn_id: str):  # noqa: ANN001, ANN202
    return client.post(f"/api/v1/turns/{turn_id}/cancel")


def _assert_reconciled() -> None:
    assert not CreditHold.objects.filter(status=CreditHold.Status.ACTIVE).exists()
    report = io.StringIO()
    call_command("reconcile_wallets", stdout=report)
    assert "DRIFT" not in report.getvalue(), report.getvalue()


# --- without a worker ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_queued_turn_is_cancelled_at_once_and_its_hold_released(session, funded_owner, settings):
    client = client_for(funded_owner)
    with parked(settings):  # no worker reads its message
        turn_id = post_turn(client, session, "never mind").data["id"]
        assert wallet_of(funded_owner).held > 0
        answer = _cancel(client, turn_id)
    assert answer.status_code == 200
    assert (answer.data["status"], answer.data["credits_charged"], answer.data["error"]) == (
        "cancelled", "0.00000000", ""
    )  # fmt: skip
    wallet = wallet_of(funded_owner)
    assert (wallet.balance, wallet.held) == (START_BALANCE, 0)
    assert CreditHold.objects.get(reference=turn_id).status == "released"
    assert not LLMCall.objects.exists()
    # Its message, delivered late, runs nothing; the stream replays the end.
    from chat.services import turn_run

    assert turn_run(turn_id=turn_id) is None
    replay = b"".join(SyncStream(client.get(f"/api/v1/turns/{turn_id}/stream"))).decode()
    assert '"status": "cancelled"' in replay.split("event: done")[1]
    _assert_reconciled()


@pytest.mark.django_db(transaction=True)
def test_a_finished_turn_cannot_be_cancelled_and_the_answer_names_its_status(owner_client, session):
    turn_id = post_turn(owner_client, session, "done already").data["id"]  # eager: completed
    answer = _cancel(owner_client, turn_id)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_state"
    assert "already completed" in answer.json()["error"]["message"]
    assert Turn.objects.get(pk=turn_id).status == "completed"
    _assert_reconciled()


@pytest.mark.django_db(transaction=True)
def test_only_the_owner_can_cancel_a_turn(owner_client, other_client, session, settings):
    with parked(settings):
        turn_id = post_turn(owner_client, session, "mine").data["id"]
        assert _cancel(other_client, turn_id).status_code == 404
        assert Turn.objects.get(pk=turn_id).status == "queued"
        assert _cancel(owner_client, turn_id).status_code == 200


# --- on the worker ----------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.postgres
def test_stop_while_streaming_keeps_and_bills_what_was_said(worker_with_env, session, funded_owner):
    worker_with_env(LOCAL_LLM_LATENCY_MS="4000")
    client = client_for(funded_owner)
    turn_id = post_turn(client, session, LONG_QUESTION).data["id"]
    stream = SyncStream(client.get(f"/api/v1/turns/{turn_id}/stream"), timeout=30)
    events = _events(stream)
    said = []
    for name, data in events:
        if name == "delta":
            said.append(data["text"])
            if len(said) == 2:
                break
    answer = _cancel(client, turn_id)
    assert answer.status_code == 202 and answer.data["status"] == "running"
    assert answer.data["cancel_requested_at"] is not None
    rest = list(events)
    said += [data["text"] for name, data in rest if name == "delta"]
    done = rest[-1]
    assert done[0] == "done" and done[1]["status"] == "cancelled"

    turn = Turn.objects.get(pk=turn_id)
    [reply] = Message.objects.filter(turn_id=turn_id, role="assistant")
    full = f"Echo: {LONG_QUESTION}"
    # Stopped at the next piece: what was streamed, and at most the piece that came
    # with the Stop; far from the whole reply.
    assert reply.content.startswith("".join(said)) and len(reply.content) < len(full) / 2
    [call] = LLMCall.objects.filter(turn_id=turn_id)
    # No usage came for the output: counted by the price's rule (bytes), not the model's.
    assert (call.status, call.output_tokens) == ("partial", len(reply.content.encode()))
    charge = expected_cost(call.input_tokens, call.output_tokens)
    assert (turn.status, turn.credits_charged, turn.error) == ("cancelled", charge, "")
    wallet = wallet_of(funded_owner)
    assert (wallet.balance, wallet.held) == (START_BALANCE - charge, 0)
    assert CreditTransaction.objects.filter(kind="debit", reference=turn_id).count() == 1
    _assert_reconciled()


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["roundtable", "orchestrator"])
def test_stop_in_a_panel_ends_it_after_the_current_speaker(mode, worker_with_env, owner):
    worker_with_env(LOCAL_LLM_LATENCY_MS="3000")
    fund(owner)
    price_for("fast")
    session = ChatSession.objects.create(user=owner, model_alias="fast")
    extra = {"orchestrator_alias": "fast"} if mode == "orchestrator" else {}
    first, _, _ = panel(session, ("One", "fast"), ("Two", "fast"), ("Three", "fast"), mode=mode, **extra)
    client = client_for(owner)
    turn_id = post_turn(client, session, LONG_QUESTION).data["id"]
    events = _events(SyncStream(client.get(f"/api/v1/turns/{turn_id}/stream"), timeout=30))
    next(data for name, data in events if name == "delta")  # the first speaker is talking
    assert _cancel(client, turn_id).status_code == 202
    assert [data for name, data in events][-1]["status"] == "cancelled"

    replies = Message.objects.filter(turn_id=turn_id, role="assistant")
    assert [m.participant_id for m in replies] == [first.pk]  # nobody spoke after the Stop
    # The first speaker's reply is partial; an orchestrator's choice before it was whole.
    statuses = [c.status for c in LLMCall.objects.filter(turn_id=turn_id)]
    assert statuses == (["partial"] if mode == "roundtable" else ["ok", "partial"])
    _assert_reconciled()


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_stream_the_provider_cut_short_is_billed_for_its_output(
    provider, worker_with_env, fake_openai, fake_anthropic, session, funded_owner
):
    fake = fake_openai if provider == "openai" else fake_anthropic
    worker_with_env(
        OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test",
        ANTHROPIC_BASE_URL=fake_anthropic.base_url, ANTHROPIC_API_KEY="sk-ant-test",
    )  # fmt: skip
    make_price("cut", provider=provider, provider_model="model-test")
    fake.script(CutStream("The model said this much before the connection dropped"))
    client = client_for(funded_owner)
    turn_id = post_turn(client, session, "hello", model_alias="cut").data["id"]
    wait_for(lambda: Turn.objects.get(pk=turn_id).status not in ("queued", "running"), timeout=30)

    turn = Turn.objects.get(pk=turn_id)
    assert turn.status == "failed" and "stream ended before the reply was complete" in turn.error
    [reply] = Message.objects.filter(turn_id=turn_id, role="assistant")
    assert reply.content == "The model said this much before the connection dropped"
    [call] = LLMCall.objects.filter(turn_id=turn_id)
    # Counted by the price's rule (bytes), or what the provider reported if more.
    assert call.status == "partial" and call.output_tokens == len(reply.content.encode())
    if provider == "anthropic":
        assert call.input_tokens == 11  # message_start reported it
    charge = expected_cost(call.input_tokens, call.output_tokens)
    assert turn.credits_charged == charge > 0
    assert wallet_of(funded_owner).balance == START_BALANCE - charge
    _assert_reconciled()
