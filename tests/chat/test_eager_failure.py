"""With eager tasks (the embedded default: no Redis, CELERY_TASK_ALWAYS_EAGER and
CELERY_TASK_EAGER_PROPAGATES), a run that raises something unexpected has no sweep
to fall back on: the turn must end failed, its hold released and nothing charged,
and the request answers as for any failed turn, never a 500 with the turn left
`running` under an active hold."""

import pytest

import chat.services.turns
from billing.models import CreditHold, CreditTransaction
from chat.models import Turn
from config.celery import app as celery_app
from tests.chat.conftest import START_BALANCE
from tests.chat.engine_support import balance, post_turn

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def engine_raises(monkeypatch):  # noqa: ANN001, ANN201
    def explode(*, turn, price):  # noqa: ANN001, ANN202
        raise RuntimeError("an engine bug")

    monkeypatch.setattr(chat.services.turns, "turn_outcome", explode)


@pytest.fixture
def propagating_eager_tasks(settings):  # noqa: ANN001, ANN201
    # What config/settings.py sets without Redis (tests' conftest turns eager on too).
    assert settings.CELERY_TASK_EAGER_PROPAGATES is True
    celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_eager_propagates = settings.CELERY_TASK_EAGER_PROPAGATES


def assert_failed_with_nothing_charged(turn: Turn, owner) -> None:  # noqa: ANN001
    turn.refresh_from_db()
    assert turn.status == Turn.Status.FAILED
    assert turn.error == "The turn could not be run; nothing was charged for it."
    assert turn.credits_charged == 0
    assert CreditHold.objects.get(reference=str(turn.pk)).status == "released"
    assert not CreditTransaction.objects.filter(wallet__user=owner, kind="debit").exists()
    assert balance(owner) == START_BALANCE


def test_an_eager_run_that_raises_fails_its_turn_and_releases_the_hold(
    owner_client, funded_owner, session, engine_raises, propagating_eager_tasks
):
    answer = post_turn(owner_client, session, "Hello")

    assert answer.status_code in (201, 202), answer.content
    assert_failed_with_nothing_charged(Turn.objects.get(), funded_owner)


def test_an_eager_run_that_raises_answers_a_waiting_request_as_a_failed_turn(
    owner_client, funded_owner, session, engine_raises, propagating_eager_tasks
):
    answer = post_turn(owner_client, session, "Hello", HTTP_PREFER="wait=5")

    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["status"] == "failed"
    assert body["error"] == "The turn could not be run; nothing was charged for it."
    assert_failed_with_nothing_charged(Turn.objects.get(), funded_owner)


def test_an_eager_v1_completion_that_raises_answers_as_a_failed_turn(
    owner_client, funded_owner, session, engine_raises, propagating_eager_tasks
):
    answer = owner_client.post(
        "/v1/chat/completions", {"model": session.model_alias, "messages": [{"role": "user", "content": "Hi"}]}
    )

    assert answer.status_code == 502, answer.content  # as for any failed turn (openai_api.answers)
    assert "error" in answer.json()
    turn = Turn.objects.get(session__source="openai")
    assert_failed_with_nothing_charged(turn, funded_owner)
