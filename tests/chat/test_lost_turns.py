"""A turn whose run_turn message never reached a worker (the broker was down at
commit) is sent again by the beat sweeper, and still charged once."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import CreditHold, CreditTransaction
from chat.models import Turn
from chat.services import turns_requeue_lost
from tests.chat.conftest import START_BALANCE, expected_cost, local_tokens, parked, post_turn, wallet_of
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def test_a_turn_whose_task_was_lost_is_sent_again_and_charged_once(session, funded_owner, settings):
    with parked(settings):  # the message goes where no worker reads: lost
        response = post_turn(client_for(funded_owner), session, "Hello there")
    assert response.status_code == 202
    turn = Turn.objects.get(pk=response.data["id"])
    assert turn.status == "queued"
    assert CreditHold.objects.get(reference=str(turn.pk)).status == "active"

    assert turns_requeue_lost() == 0  # too recent: it may just be waiting in the queue
    Turn.objects.filter(pk=turn.pk).update(created_at=timezone.now() - timedelta(minutes=11))

    assert turns_requeue_lost() == 1  # eager here: the turn runs now
    turn.refresh_from_db()
    assert turn.status == "completed"
    charged = expected_cost(4 + local_tokens("Hello there"), local_tokens("Echo: Hello there"))
    assert turn.credits_charged == charged
    wallet = wallet_of(funded_owner)
    assert (wallet.balance, wallet.held) == (START_BALANCE - charged, 0)
    assert CreditTransaction.objects.filter(kind="debit").count() == 1

    assert turns_requeue_lost() == 0  # nothing left to send
