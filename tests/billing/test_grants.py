"""Promotional and expiring grants: the order credits are used in, expiry (all that
is left, even what turns in flight hold), and the ledger still explaining every
balance and lot. A debit expiring due lots itself: test_expiry_at_debit.py."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.services import user_register
from billing.models import CreditGrant, CreditTransaction, Wallet
from billing.selectors import grant_ledger_problems, wallet_drifts
from billing.services import (
    grant_expire,
    grants_expire_due,
    wallet_debit,
    wallet_grant,
    wallet_hold_place,
    wallet_hold_release,
    wallet_refund,
    wallet_reverse,
    wallet_topup,
)
from billing.tasks import expire_grants
from chat.models import ChatSession, Turn
from config.celery import app
from core.exceptions import ApplicationError
from notifications.models import Notification
from tests.chat.conftest import make_price, post_turn

pytestmark = pytest.mark.django_db

D = Decimal


def days(n: float):  # noqa: ANN201
    return timezone.now() + timedelta(days=n)


def travel(monkeypatch, delta: timedelta) -> None:  # noqa: ANN001
    """Time passes by `delta` for every clock Django and the services read. (A test
    cannot move a lot's expires_at into the past instead: on PostgreSQL the database
    refuses any change to a lot but its remaining and expired_at.)"""
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + delta)


def remaining(row: CreditTransaction) -> Decimal:
    return CreditGrant.objects.get(transaction=row).remaining


def assert_books_balance(user) -> Wallet:  # noqa: ANN001
    """balance = sum of the ledger, grants_remaining = sum of the lots, every lot is
    what the ledger explains, and reconcile_wallets says so too."""
    wallet = Wallet.objects.get(user=user)
    ledger = sum((row.amount for row in CreditTransaction.objects.filter(wallet=wallet)), D("0"))
    lots = sum((lot.remaining for lot in CreditGrant.objects.filter(wallet=wallet)), D("0"))
    assert wallet.balance == ledger
    assert wallet.grants_remaining == lots
    assert grant_ledger_problems(wallet=wallet) == []
    assert list(wallet_drifts()) == []
    out = StringIO()
    call_command("reconcile_wallets", stdout=out)
    assert "no drift" in out.getvalue()
    return wallet


def test_debits_use_promotional_then_earliest_expiring_grants_then_bought_credits(owner):
    wallet_topup(user=owner, amount=D("10"), reference="pi_1")
    promo_forever = wallet_grant(user=owner, amount=D("5"), reason="promo", promotional=True)
    promo_later = wallet_grant(user=owner, amount=D("3"), reason="promo", promotional=True, expires_at=days(2))
    promo_soon = wallet_grant(user=owner, amount=D("2"), reason="promo", promotional=True, expires_at=days(1))
    expiring = wallet_grant(user=owner, amount=D("4"), reason="goodwill", expires_at=days(1))
    plain = wallet_grant(user=owner, amount=D("1"), reason="plain")
    assert not hasattr(plain, "lot") or CreditGrant.objects.filter(transaction=plain).count() == 0
    assert Wallet.objects.get(user=owner).grants_remaining == D("14")

    wallet_debit(user=owner, amount=D("4"), reference="turn-1")  # 2 from promo_soon, 2 from promo_later
    assert [remaining(r) for r in (promo_soon, promo_later, promo_forever, expiring)] == [
        D("0"),
        D("1"),
        D("5"),
        D("4"),
    ]

    wallet_debit(user=owner, amount=D("5.5"), reference="turn-2")  # 1 promo_later, 4.5 promo_forever
    assert [remaining(r) for r in (promo_soon, promo_later, promo_forever, expiring)] == [
        D("0"),
        D("0"),
        D("0.5"),
        D("4"),
    ]

    wallet_debit(user=owner, amount=D("5"), reference="turn-3")  # 0.5 promo_forever, 4 expiring, 0.5 bought
    assert [remaining(r) for r in (promo_soon, promo_later, promo_forever, expiring)] == [D("0")] * 4

    wallet = assert_books_balance(owner)
    assert wallet.balance == D("10.5")  # 10 bought + 1 plain grant - 0.5
    assert wallet.grants_remaining == D("0")


def test_take_backs_and_refunds_touch_no_grant(owner):
    wallet_topup(user=owner, amount=D("10"), reference="pi_1")
    promo = wallet_grant(user=owner, amount=D("5"), reason="promo", promotional=True, expires_at=days(3))
    wallet_reverse(user=owner, amount=D("10"), reference="re_1", reason="refunded at Stripe")
    wallet_refund(user=owner, amount=D("1"), reason="bad answer")
    assert remaining(promo) == D("5")
    assert Wallet.objects.get(user=owner).balance == D("6")
    assert_books_balance(owner)


def test_expiry_writes_one_row_for_what_is_left_and_running_it_again_changes_nothing(owner, monkeypatch):
    wallet_topup(user=owner, amount=D("10"), reference="pi_1")
    grant = wallet_grant(user=owner, amount=D("8"), reason="trial", promotional=True, expires_at=days(1))
    wallet_debit(user=owner, amount=D("3"), reference="turn-1")
    travel(monkeypatch, timedelta(days=1, seconds=1))

    assert expire_grants() == 1
    assert expire_grants() == 0  # the beat task run twice
    assert grants_expire_due() == 0

    lot = CreditGrant.objects.get(transaction=grant)
    row = CreditTransaction.objects.get(kind="expiry")
    assert (row.amount, row.reference, row.balance_after) == (D("-5"), str(lot.pk), D("10"))
    assert (lot.remaining, lot.expired_at is not None) == (D("0"), True)
    assert assert_books_balance(owner).balance == D("10")


def test_an_expired_grant_is_never_used_again(owner):
    wallet_topup(user=owner, amount=D("10"), reference="pi_1")
    grant = wallet_grant(user=owner, amount=D("4"), reason="trial", expires_at=days(1))
    assert grants_expire_due(now=days(2)) == 1
    wallet_debit(user=owner, amount=D("6"), reference="turn-1")
    assert remaining(grant) == D("0")
    assert CreditTransaction.objects.filter(kind="expiry").get().amount == D("-4")
    assert assert_books_balance(owner).balance == D("4")


def test_a_grant_not_yet_due_does_not_expire(owner):
    grant = wallet_grant(user=owner, amount=D("4"), reason="trial", expires_at=days(1))
    assert grants_expire_due() == 0
    assert grant_expire(grant_id=CreditGrant.objects.get(transaction=grant).pk) is None
    assert remaining(grant) == D("4") and not CreditTransaction.objects.filter(kind="expiry").exists()


def test_an_expiry_takes_all_that_is_left_even_the_part_turns_in_flight_hold(owner):
    """An expired credit is never spent (issue 29), so keeping the held part for the
    turns in flight would only keep it on the balance: the sweep expires it all, and
    the turns settle against the rest of the balance."""
    wallet_topup(user=owner, amount=D("5"), reference="pi_1")
    grant = wallet_grant(user=owner, amount=D("10"), reason="trial", promotional=True, expires_at=days(1))
    wallet_hold_place(user=owner, amount=D("4"), reference="turn-1")  # would have fallen on the grant

    assert grants_expire_due(now=days(2)) == 1
    lot = CreditGrant.objects.get(transaction=grant)
    assert lot.remaining == D("0")
    assert grants_expire_due(now=days(2)) == 0

    wallet_debit(user=owner, amount=D("3"), reference="turn-1", release_hold="turn-1")
    assert remaining(grant) == D("0")
    assert grants_expire_due(now=days(2)) == 0
    rows = list(CreditTransaction.objects.filter(kind="expiry").order_by("id").values_list("amount", "reference"))
    assert rows == [(D("-10"), str(lot.pk))]
    wallet = assert_books_balance(owner)
    assert (wallet.balance, wallet.held, wallet.grants_remaining) == (D("2"), D("0"), D("0"))


def test_the_sweep_leaves_a_promotional_grant_that_never_expires(owner):
    promo = wallet_grant(user=owner, amount=D("3"), reason="promo", promotional=True)
    expiring = wallet_grant(user=owner, amount=D("10"), reason="goodwill", expires_at=days(1))
    wallet_topup(user=owner, amount=D("20"), reference="pi_1")
    wallet_hold_place(user=owner, amount=D("5"), reference="turn-1")
    assert grants_expire_due(now=days(2)) == 1
    assert (remaining(expiring), remaining(promo)) == (D("0"), D("3"))
    assert CreditTransaction.objects.get(kind="expiry").amount == D("-10")
    wallet_hold_release(user=owner, reference="turn-1")
    assert grants_expire_due(now=days(2)) == 0
    assert assert_books_balance(owner).balance == D("23")


def test_a_turn_in_flight_when_its_grant_expires_is_paid_from_bought_credits(owner):
    grant = wallet_grant(user=owner, amount=D("2"), reason="trial", expires_at=days(1))
    wallet_topup(user=owner, amount=D("10"), reference="pi_1")
    wallet_hold_place(user=owner, amount=D("7"), reference="turn-1")
    assert grants_expire_due(now=days(2)) == 1
    assert remaining(grant) == D("0")
    wallet_debit(user=owner, amount=D("7"), reference="turn-1", release_hold="turn-1")
    assert remaining(grant) == D("0")
    assert assert_books_balance(owner).balance == D("3")


def test_reconcile_reports_a_grant_the_ledger_does_not_explain(owner):
    grant = wallet_grant(user=owner, amount=D("4"), reason="trial", promotional=True)
    wallet_debit(user=owner, amount=D("1"), reference="turn-1")
    lot = CreditGrant.objects.get(transaction=grant)
    CreditGrant.objects.filter(pk=lot.pk).update(remaining=D("2.5"))  # written around billing.services
    Wallet.objects.filter(user=owner).update(grants_remaining=D("2.5"))

    assert grant_ledger_problems(wallet=owner.wallet) == [
        f"grant {lot.pk}: remaining 2.50000000 != 3.00000000 by the ledger"
    ]
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("reconcile_wallets", "--fix", stdout=out)
    assert f"NOT FIXED user {owner.email}" in out.getvalue() and "by the ledger" in out.getvalue()


def test_reconcile_fix_recomputes_a_drifted_grants_remaining(owner):
    wallet_grant(user=owner, amount=D("4"), reason="trial", promotional=True)
    Wallet.objects.filter(user=owner).update(grants_remaining=D("1"))
    out = StringIO()
    call_command("reconcile_wallets", "--fix", stdout=out)
    assert "grants_remaining 1.00000000 != its grants' remaining 4.00000000" in out.getvalue()
    assert Wallet.objects.get(user=owner).grants_remaining == D("4")


@pytest.mark.parametrize(
    ("when", "message"),
    [(lambda: timezone.now() - timedelta(minutes=1), "Must be in the future."),
     (lambda: (timezone.now() + timedelta(days=1)).replace(tzinfo=None), "A time with a time zone is required")],
)  # fmt: skip
def test_a_grant_expiring_in_the_past_or_without_a_zone_is_refused(owner, when, message):
    with pytest.raises(ApplicationError) as caught:
        wallet_grant(user=owner, amount=D("4"), reason="trial", expires_at=when())
    assert list(caught.value.fields) == ["expires_at"] and message in caught.value.fields["expires_at"][0]
    assert not CreditTransaction.objects.exists() and not CreditGrant.objects.exists()


def test_a_repeated_grant_reference_makes_one_grant_and_one_lot(owner):
    for _ in range(2):
        wallet_grant(user=owner, amount=D("4"), reason="trial", promotional=True, reference="promo-1")
    assert CreditGrant.objects.count() == 1
    wallet = assert_books_balance(owner)
    assert (wallet.balance, wallet.grants_remaining) == (D("4"), D("4"))


def test_signup_credits_are_promotional_and_expire_after_signup_credits_days(db, settings):
    settings.SIGNUP_CREDITS = D("2.5")
    settings.SIGNUP_CREDITS_DAYS = 14
    user, _, _ = user_register(email="new@example.com", password="pw-new-user-123", key_name="first")
    lot = CreditGrant.objects.get(wallet__user=user)
    assert (lot.amount, lot.promotional) == (D("2.5"), True)
    assert timedelta(days=13, hours=23) < lot.expires_at - timezone.now() <= timedelta(days=14)
    settings.SIGNUP_CREDITS_DAYS = 0
    other, _, _ = user_register(email="other@example.com", password="pw-new-user-123", key_name="first")
    assert CreditGrant.objects.get(wallet__user=other).expires_at is None


# --- the API, the admin and the command ------------------------------------------------


def test_wallet_lists_open_grants_and_transactions_show_the_expiry(owner, owner_client):
    soon = wallet_grant(user=owner, amount=D("2"), reason="trial", expires_at=days(1))
    promo = wallet_grant(user=owner, amount=D("3"), reason="promo", promotional=True)
    wallet_debit(user=owner, amount=D("1"), reference="turn-1")  # from the promotional grant
    body = owner_client.get("/api/v1/users/me/wallet").json()
    assert body["balance"] == "4.00000000"
    assert [
        (g["id"], g["amount"], g["remaining"], g["promotional"], g["expires_at"] is None) for g in body["grants"]
    ] == [
        (promo.lot.pk, "3.00000000", "2.00000000", True, True),
        (soon.lot.pk, "2.00000000", "2.00000000", False, False),
    ]
    grants_expire_due(now=days(2))
    body = owner_client.get("/api/v1/users/me/wallet").json()
    assert [g["id"] for g in body["grants"]] == [promo.lot.pk]
    rows = owner_client.get("/api/v1/users/me/transactions").json()["results"]
    assert (rows[0]["kind"], rows[0]["amount"], rows[0]["reference"]) == ("expiry", "-2.00000000", str(soon.lot.pk))


def test_admin_api_grants_promotional_expiring_credits(owner, grant_staff_client):
    expires = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    response = grant_staff_client.post(
        f"/api/v1/admin/wallets/{owner.pk}/grant",
        {"amount": "7", "reason": "conference", "promotional": True, "expires_at": expires.isoformat()},
        format="json",
    )
    assert response.status_code == 201, response.json()
    [grant] = response.json()["wallet"]["grants"]
    assert (grant["remaining"], grant["promotional"]) == ("7.00000000", True)
    lot = CreditGrant.objects.get()
    assert (lot.expires_at, lot.promotional, lot.transaction_id) == (
        expires,
        True,
        response.json()["transaction"]["id"],
    )
    detail = grant_staff_client.get(f"/api/v1/admin/wallets/{owner.pk}").json()
    assert [g["id"] for g in detail["grants"]] == [lot.pk]


@pytest.mark.parametrize("expires_at", ["2020-01-01T00:00:00Z", "not a date"])
def test_admin_api_refuses_a_grant_expiring_in_the_past_naming_the_field(owner, grant_staff_client, expires_at):
    response = grant_staff_client.post(
        f"/api/v1/admin/wallets/{owner.pk}/grant",
        {"amount": "7", "reason": "conference", "expires_at": expires_at},
        format="json",
    )
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["expires_at"]
    assert not CreditTransaction.objects.exists()


def test_grant_credits_command_makes_a_promotional_expiring_grant(owner):
    out = StringIO()
    call_command(
        "grant_credits", owner.email, "5", "--reason", "promo", "--promotional", "--expires-in-days", "7", stdout=out
    )
    lot = CreditGrant.objects.get()
    assert lot.promotional and timedelta(days=6) < lot.expires_at - timezone.now() <= timedelta(days=7)
    assert "promotional, expires" in out.getvalue()
    call_command("grant_credits", owner.email, "1", "--reason", "x", "--expires-at", "2031-05-01T12:00", stdout=out)
    assert CreditGrant.objects.order_by("-id").first().expires_at.isoformat() == "2031-05-01T12:00:00+00:00"
    with pytest.raises(CommandError, match="Must be in the future"):
        call_command("grant_credits", owner.email, "1", "--reason", "x", "--expires-at", "2020-01-01T00:00Z")


def test_expire_grants_command_expires_what_is_due(owner, monkeypatch):
    wallet_grant(user=owner, amount=D("4"), reason="trial", expires_at=days(1))
    travel(monkeypatch, timedelta(days=1, seconds=1))
    out = StringIO()
    call_command("expire_grants", stdout=out)
    call_command("expire_grants", stdout=out)
    assert out.getvalue().splitlines() == ["1 grant expiries written.", "0 grant expiries written."]
    assert assert_books_balance(owner).balance == D("0")


@pytest.mark.django_db(transaction=True)
def test_an_expiry_that_takes_the_balance_under_the_threshold_sends_the_low_balance_notice(owner, settings):
    settings.LOW_BALANCE_THRESHOLD = D("5")
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    wallet_topup(user=owner, amount=D("2"), reference="pi_1")
    wallet_grant(user=owner, amount=D("8"), reason="trial", expires_at=days(1))
    assert grants_expire_due(now=days(2)) == 1
    [notice] = Notification.objects.filter(user=owner, kind="low_balance")
    assert notice.data["balance"] == "2.00000000"
    assert len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_a_chat_turn_is_paid_from_the_promotional_grant_first(owner, owner_client):
    price = make_price()
    wallet_topup(user=owner, amount=D("10"), reference="pi_1")
    promo = wallet_grant(user=owner, amount=D("5"), reason="promo", promotional=True, expires_at=days(3))
    session = ChatSession.objects.create(user=owner, model_alias=price.alias)
    assert post_turn(owner_client, session, "hello there").data["status"] == "completed"
    turn = Turn.objects.get()
    assert turn.credits_charged > 0
    assert remaining(promo) == D("5") - turn.credits_charged
    wallet = assert_books_balance(owner)
    assert (wallet.balance, wallet.held) == (D("15") - turn.credits_charged, D("0"))


def test_beat_runs_the_expiry_sweep_every_grant_expiry_sweep_seconds():
    app.loader.import_default_modules()  # every app's tasks module adds its entries
    entry = app.conf.beat_schedule["billing: expire credit grants"]
    assert (entry["task"], entry["schedule"]) == ("billing.expire_grants", 60.0)
    assert app.tasks["billing.expire_grants"].run() == 0  # the task beat sends is the sweep


def test_a_grant_all_held_at_expiry_expires_at_once(owner):
    grant = wallet_grant(user=owner, amount=D("2"), reason="trial", expires_at=days(1))
    wallet_topup(user=owner, amount=D("10"), reference="pi_1")
    wallet_hold_place(user=owner, amount=D("3"), reference="turn-1")
    assert grants_expire_due(now=days(2)) == 1
    lot = CreditGrant.objects.get(transaction=grant)
    assert (lot.remaining, lot.expired_at is not None) == (D("0"), True)
    wallet_debit(user=owner, amount=D("0.5"), reference="turn-1", release_hold="turn-1")
    assert grants_expire_due(now=days(2)) == 0
    row = CreditTransaction.objects.get(kind="expiry")
    assert (row.amount, row.reference) == (D("-2"), str(lot.pk))
    assert assert_books_balance(owner).balance == D("9.5")
