"""Fair use: one user cannot fill the workers or the web tier alone. Beyond
MAX_CONCURRENT_TURNS_PER_USER turns queued or running, or MAX_STREAMS_PER_USER open
streams, the answer is 429 with Retry-After in the shared error body, and nothing is
written."""

import pytest

from billing.models import CreditHold, CreditTransaction
from chat.models import Message, Turn
from tests.chat.conftest import post_turn, wallet_of
from tests.chat.sse import SyncStream, read_all


@pytest.fixture
def queued_only(settings):  # noqa: ANN001, ANN201
    """Turns stay queued: eager tasks off and no worker consuming (the memory broker)."""
    from config.celery import app as celery_app  # the app's own eager switch, as tests/conftest.py sets it

    settings.CELERY_TASK_ALWAYS_EAGER = False
    celery_app.conf.task_always_eager = False
    yield
    celery_app.conf.task_always_eager = True


@pytest.mark.django_db
def test_a_user_past_the_turns_in_flight_limit_gets_429_and_nothing_is_written(
    owner_client, session, settings, queued_only
):
    settings.MAX_CONCURRENT_TURNS_PER_USER = 2
    assert [post_turn(owner_client, session, f"q{n}").status_code for n in range(2)] == [202, 202]
    wallet = wallet_of(session.user)
    before = (Turn.objects.count(), Message.objects.count(), CreditHold.objects.count(), wallet.held)

    refused = post_turn(owner_client, session, "one too many")

    assert refused.status_code == 429 and refused["Retry-After"].isdigit()
    body = refused.json()["error"]
    assert body["code"] == "too_many_requests" and "At most 2 turns" in body["message"]
    assert (
        Turn.objects.count(),
        Message.objects.count(),
        CreditHold.objects.count(),
        wallet_of(session.user).held,
    ) == before
    assert not CreditTransaction.objects.filter(kind="debit").exists()


@pytest.mark.django_db(transaction=True)  # the eager run happens on commit
def test_finished_turns_do_not_count_against_the_limit(owner_client, session, settings):
    settings.MAX_CONCURRENT_TURNS_PER_USER = 1  # eager: each turn has finished when the next comes
    assert [post_turn(owner_client, session, f"q{n}").status_code for n in range(3)] == [201, 201, 201]


@pytest.mark.django_db(transaction=True)
def test_a_user_past_the_open_streams_limit_gets_429_until_one_closes(owner_client, session, settings):
    settings.MAX_STREAMS_PER_USER = 1
    turn = post_turn(owner_client, session, "stream me").data
    url = f"/api/v1/turns/{turn['id']}/stream"
    first = SyncStream(owner_client.get(url))  # open, not read yet

    refused = owner_client.get(url)
    assert refused.status_code == 429 and refused["Retry-After"].isdigit()
    assert "At most 1 open streams" in refused.json()["error"]["message"]

    assert b"event: done" in b"".join(first)  # read to its end: the stream closes
    assert b"event: done" in read_all(owner_client.get(url))


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_stream_whose_client_goes_away_frees_its_slot_at_once(owner_client, session, settings):
    settings.MAX_STREAMS_PER_USER = 1
    turn = Turn.objects.create(session=session, user=session.user, model_alias="fast")  # queued: stays open
    url = f"/api/v1/turns/{turn.pk}/stream"
    stream = SyncStream(owner_client.get(url))
    assert next(stream).startswith(b"event: status")
    assert owner_client.get(url).status_code == 429

    stream.close()  # the client went away

    again = SyncStream(owner_client.get(url))
    assert next(again).startswith(b"event: status")
    again.close()
