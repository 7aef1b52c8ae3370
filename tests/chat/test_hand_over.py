"""A committed turn whose hand-over to the broker raises is still accepted: the
request answers as usual, the turn waits in the database (the outbox) for the
sweep, and the failure is logged. (Django's robust on-commit hook logs the
callback's __qualname__; a functools.partial has none, so the log line itself
raised and the request answered 500 with the turn and its hold committed.)"""

import logging

import pytest

from billing.models import CreditHold
from chat import dispatch
from chat.models import Turn
from tests.chat.engine_support import post_turn

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def send_raises(monkeypatch):  # noqa: ANN001, ANN201
    def refuse(*, turn_id: str) -> bool:
        raise RuntimeError("the broker client failed unexpectedly")

    monkeypatch.setattr(dispatch, "run_turn_send", refuse)


def test_a_chat_turn_whose_hand_over_raises_is_accepted_and_waits_for_the_sweep(
    owner_client, session, send_raises, caplog
):
    with caplog.at_level(logging.ERROR, logger="chat.services.turns"):
        answer = post_turn(owner_client, session, "Hello")
    assert answer.status_code == 202, answer.content
    turn = Turn.objects.get()
    assert turn.status == "queued" and turn.dispatched_at is not None  # the sweep re-sends it later
    assert CreditHold.objects.get(reference=str(turn.pk)).status == "active"
    assert f"turn {turn.pk}: the hand-over failed; the sweep sends it" in caplog.text


def test_a_v1_request_whose_hand_over_raises_is_accepted(owner, price, send_raises, caplog):
    from accounts.services import api_key_create
    from billing.services import wallet_grant
    from chat.llm import ChatMessage
    from chat.services.completions import CompletionRequest, completion_turn_create

    wallet_grant(user=owner, amount="10", reason="test credits")
    api_key, _ = api_key_create(user=owner, name="sdk")
    request = CompletionRequest(price=price, messages=[ChatMessage(role="user", content="Hi")])
    with caplog.at_level(logging.ERROR, logger="chat.services.turns"):
        turn = completion_turn_create(user=owner, api_key=api_key, request=request)  # raised before the fix
    assert Turn.objects.get(pk=turn.pk).status == "queued"
    assert f"turn {turn.pk}: the hand-over failed; the sweep sends it" in caplog.text
