"""The participant/mode invariants hold under concurrent requests (PostgreSQL row locks)."""

import threading
from collections.abc import Callable

import pytest
from django.db import connection

from chat.models import ChatSession, Participant
from chat.services.participants import participant_create, participant_delete, session_mode_change
from core.exceptions import StateConflict

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def race(*actions: Callable[[], None]) -> list[str]:
    """Run the actions at the same moment, each on its own connection; 'ok' or 'conflict' for each."""
    barrier = threading.Barrier(len(actions))
    outcomes: list[str] = ["?"] * len(actions)

    def run(index: int, action: Callable[[], None]) -> None:
        try:
            barrier.wait()
            action()
            outcomes[index] = "ok"
        except StateConflict:
            outcomes[index] = "conflict"
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_concurrent_deletes_never_leave_a_roundtable_below_two(owner, prices):
    for _ in range(5):
        session = ChatSession.objects.create(user=owner)
        members = [participant_create(session=session, name=n, model_alias="fast") for n in "ABC"]
        session_mode_change(session=session, mode="roundtable")

        outcomes = race(*(lambda p=p: participant_delete(participant=p) for p in members))

        assert sorted(outcomes) == ["conflict", "conflict", "ok"]
        assert Participant.objects.filter(session=session).count() == 2


def test_mode_change_and_delete_cannot_both_pass(owner, prices):
    for _ in range(5):
        session = ChatSession.objects.create(user=owner)
        first = participant_create(session=session, name="A", model_alias="fast")
        participant_create(session=session, name="B", model_alias="fast")

        outcomes = race(
            lambda s=session: session_mode_change(session=ChatSession.objects.get(pk=s.pk), mode="roundtable"),
            lambda p=first: participant_delete(participant=Participant.objects.get(pk=p.pk)),
        )

        assert sorted(outcomes) == ["conflict", "ok"]
        row = ChatSession.objects.get(pk=session.pk)
        count = Participant.objects.filter(session=session).count()
        assert (row.mode, count) in {("roundtable", 2), ("single", 1)}
