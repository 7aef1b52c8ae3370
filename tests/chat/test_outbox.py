"""The outbox and the leases, in one process: the beat sweep hands over every turn
that must run and has no live message or worker, and a turn is never run by two
workers at once. (The real broker outage, worker kill and database failure are in
tests/chat/test_turn_reliability.py.)"""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import CreditHold, CreditTransaction
from chat import leases
from chat.models import Turn
from chat.services import turn_start, turns_sweep
from tests.chat.conftest import START_BALANCE, expected_cost, local_tokens, parked, post_turn, wallet_of
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

CHARGE = expected_cost(4 + local_tokens("Hello there"), local_tokens("Echo: Hello there"))


def _parked_turn(owner, session, settings) -> Turn:  # noqa: ANN001
    with parked(settings):  # the message goes where no worker reads
        response = post_turn(client_for(owner), session, "Hello there")
    assert response.status_code == 202
    return Turn.objects.get(pk=response.data["id"])


def _assert_charged_once(turn: Turn, owner) -> None:  # noqa: ANN001
    turn.refresh_from_db()
    assert (turn.status, turn.credits_charged) == ("completed", CHARGE)
    wallet = wallet_of(owner)
    assert (wallet.balance, wallet.held) == (START_BALANCE - CHARGE, 0)
    assert CreditTransaction.objects.filter(kind="debit", reference=str(turn.pk)).count() == 1


def test_an_accepted_turn_is_marked_handed_over(session, funded_owner, settings):
    turn = _parked_turn(funded_owner, session, settings)
    assert turn.status == "queued" and turn.dispatched_at is not None
    assert turns_sweep() == 0  # its message is on the broker: nothing to hand over


def test_a_turn_the_broker_never_took_is_handed_over_by_the_sweep(session, funded_owner, settings):
    turn = _parked_turn(funded_owner, session, settings)
    # What a failed send leaves (chat.services.turns.turn_hand_over clears the mark).
    Turn.objects.filter(pk=turn.pk).update(dispatched_at=None)
    assert turns_sweep() == 0  # the accepting request may still be sending it
    Turn.objects.filter(pk=turn.pk).update(created_at=timezone.now() - timedelta(seconds=3))

    assert turns_sweep() == 1  # eager here: the turn runs now
    _assert_charged_once(turn, funded_owner)
    assert turns_sweep() == 0


def test_a_message_lost_after_the_hand_over_is_sent_again(session, funded_owner, settings):
    turn = _parked_turn(funded_owner, session, settings)
    long_ago = timezone.now() - timedelta(seconds=settings.TURN_REDISPATCH_SECONDS + 1)
    Turn.objects.filter(pk=turn.pk).update(dispatched_at=long_ago, created_at=long_ago)
    assert turns_sweep() == 1
    _assert_charged_once(turn, funded_owner)


def test_a_live_lease_keeps_a_second_worker_out(session, funded_owner, settings):
    turn = _parked_turn(funded_owner, session, settings)
    first = leases.Lease(turn_id=str(turn.pk))
    assert turn_start(turn_id=turn.pk, lease=first) is not None
    # A redelivered message, or the sweep's, while the first run is alive:
    assert turn_start(turn_id=turn.pk) is None
    assert turns_sweep() == 0
    turn.refresh_from_db()
    assert (turn.status, turn.attempts, turn.lease_token) == ("running", 1, first.token)


def test_a_turn_whose_lease_ran_out_is_taken_over_once_and_charged_once(session, funded_owner, settings):
    turn = _parked_turn(funded_owner, session, settings)
    assert turn_start(turn_id=turn.pk) is not None  # a worker claims it, then dies
    now = timezone.now()
    Turn.objects.filter(pk=turn.pk).update(
        dispatched_at=now - timedelta(seconds=settings.TURN_LEASE_SECONDS + 1), lease_expires_at=now - timedelta(seconds=1)
    )

    assert turns_sweep() == 1  # handed over; eager: taken over and completed here
    _assert_charged_once(turn, funded_owner)
    turn.refresh_from_db()
    assert turn.attempts == 2
    assert not CreditHold.objects.filter(reference=str(turn.pk), status="active").exists()


def test_a_turn_that_keeps_dying_is_failed_and_its_hold_released(session, funded_owner, settings):
    turn = _parked_turn(funded_owner, session, settings)
    Turn.objects.filter(pk=turn.pk).update(
        status="running", attempts=settings.TURN_MAX_ATTEMPTS, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert turns_sweep() == 0
    turn.refresh_from_db()
    assert turn.status == "failed" and "3 attempts" in turn.error
    wallet = wallet_of(funded_owner)
    assert (wallet.balance, wallet.held) == (START_BALANCE, 0)


def test_a_completion_from_a_run_that_lost_its_lease_writes_nothing(session, funded_owner, settings):
    from chat.engine.metering import TurnOutcome
    from chat.services import turn_complete

    turn = _parked_turn(funded_owner, session, settings)
    stale = leases.Lease(turn_id=str(turn.pk))
    started = turn_start(turn_id=turn.pk, lease=stale)
    Turn.objects.filter(pk=turn.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert turn_start(turn_id=turn.pk) is not None  # another worker took it over

    written = turn_complete(turn=started, outcome=TurnOutcome(error="late"), lease_token=stale.token)
    assert written.status == "running"  # the stale run wrote nothing
    assert wallet_of(funded_owner).held > 0
