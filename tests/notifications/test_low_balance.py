"""The low-balance notice: one email and one `low_balance` entry each time a
wallet's balance falls below LOW_BALANCE_THRESHOLD, not one per turn."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from billing.services import wallet_adjust, wallet_debit, wallet_grant, wallet_reverse, wallet_topup
from chat.models import ChatSession
from notifications.models import Notification
from notifications.services import notification_emails_sweep
from tests.chat.conftest import make_price, post_turn

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _threshold(settings) -> None:  # noqa: ANN001
    settings.LOW_BALANCE_THRESHOLD = Decimal("5")
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def notices(user) -> list[Notification]:  # noqa: ANN001
    return list(Notification.objects.filter(user=user, kind="low_balance").order_by("id"))


def test_a_debit_crossing_the_threshold_notifies_once_with_one_email(owner):
    wallet_grant(user=owner, amount="6", reason="start")
    wallet_debit(user=owner, amount="0.5", reference="turn-1")  # 5.5: above
    assert notices(owner) == [] and mail.outbox == []

    wallet_debit(user=owner, amount="1", reference="turn-2")  # 4.5: crossed
    wallet_debit(user=owner, amount="1", reference="turn-3")  # 3.5: still below
    wallet_debit(user=owner, amount="1", reference="turn-2")  # a replay writes nothing

    [notice] = notices(owner)
    assert notice.data == {"balance": "4.50000000", "threshold": "5.00000000"}
    assert "4.50000000" in notice.message and notice.emailed_at is not None
    [email] = mail.outbox
    assert email.to == [owner.email] and "4.50000000" in email.body and email.subject == "Parley: your balance is low"


def test_each_new_crossing_after_a_top_up_notifies_again(owner):
    wallet_grant(user=owner, amount="5", reason="start")  # exactly the threshold: not low
    wallet_debit(user=owner, amount="0.00000001", reference="turn-1")
    wallet_topup(user=owner, amount="10", reference="pi_1")
    wallet_debit(user=owner, amount="2", reference="turn-2")  # 12.99999999: above
    wallet_reverse(user=owner, amount="10", reference="re_1", reason="refunded")  # 2.99999999: crossed
    assert [n.data["balance"] for n in notices(owner)] == ["4.99999999", "2.99999999"]
    assert len(mail.outbox) == 2


def test_a_fall_that_starts_below_the_threshold_or_a_rise_notifies_nothing(owner):
    wallet_adjust(user=owner, amount="3", reason="start")
    wallet_debit(user=owner, amount="1", reference="turn-1")
    wallet_adjust(user=owner, amount="1", reason="goodwill")
    assert notices(owner) == [] and mail.outbox == []


def test_turns_notify_once_and_the_api_lists_only_the_callers_notices(owner, owner_client, other_user):
    price = make_price()
    wallet_grant(user=owner, amount="5.00001", reason="start")
    session = ChatSession.objects.create(user=owner, model_alias=price.alias)
    for _ in range(3):
        assert post_turn(owner_client, session, "hello there").data["status"] == "completed"
    wallet_grant(user=other_user, amount="6", reason="start")
    wallet_debit(user=other_user, amount="2", reference="other-turn")

    body = owner_client.get("/api/v1/users/me/notifications").json()
    [entry] = body["results"]
    assert entry["kind"] == "low_balance" and set(entry) == {"id", "kind", "message", "data", "created_at"}
    assert Decimal(entry["data"]["balance"]) < Decimal("5")
    assert [email.to for email in mail.outbox] == [[owner.email], [other_user.email]]


def test_the_notifications_list_needs_a_login(anon_client):
    answer = anon_client.get("/api/v1/users/me/notifications")
    assert answer.status_code == 401 and "error" in answer.json()


def test_a_failing_mail_server_leaves_the_email_to_the_sweep(owner, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 1, 1  # nothing listens
    wallet_grant(user=owner, amount="6", reason="start")
    wallet_debit(user=owner, amount="2", reference="turn-1")  # the after-commit send fails: not raised here
    [notice] = notices(owner)
    assert notice.emailed_at is None  # released for the sweep

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert notification_emails_sweep() == 0  # too fresh: its own task may still be retrying
    Notification.objects.filter(pk=notice.pk).update(created_at=timezone.now() - timedelta(minutes=3))
    assert notification_emails_sweep() == 1 and notification_emails_sweep() == 0
    assert len(mail.outbox) == 1 and notices(owner)[0].emailed_at is not None
