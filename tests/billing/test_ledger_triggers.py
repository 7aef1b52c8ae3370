"""The ledger is append-only in the database itself (issue 29): on PostgreSQL, triggers
(django-pgtrigger, declared in the models' Meta) refuse an UPDATE or DELETE of a ledger
row, any change to a grant lot but its remaining going down and its expired_at being
set once, and any change to a recorded Stripe event but a pending one being applied.
Each refusal is tried through raw SQL, as code going around billing.services (or a
person at psql) would; the services' own paths still work."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from billing.models import CreditGrant, CreditTransaction, TopUpEvent, Wallet
from billing.services import grants_expire_due, wallet_debit, wallet_grant, wallet_topup
from billing.stripe.services import topup_event_receive
from tests.billing.test_grants import assert_books_balance, travel

D = Decimal
postgres = pytest.mark.postgres
pytestmark = pytest.mark.django_db


def sql(statement: str, params: list | None = None) -> int:
    """Runs one raw statement in its own savepoint; the rows it changed."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.rowcount


def refused(statement: str, params: list | None = None) -> str:
    """The database's refusal of `statement` (nothing of it is written)."""
    with pytest.raises(DatabaseError) as refusal:
        sql(statement, params)
    return str(refusal.value)


@pytest.fixture
def ledger(owner):  # noqa: ANN001, ANN201
    """A top-up, a promotional expiring lot and a debit that took from it."""
    topup = wallet_topup(user=owner, amount=D("10"), reference="pi_1")
    grant = wallet_grant(
        user=owner, amount=D("5"), reason="trial", promotional=True, expires_at=timezone.now() + timedelta(days=1)
    )
    debit = wallet_debit(user=owner, amount=D("2"), reference="turn-1")
    return {"topup": topup, "grant": grant, "debit": debit, "lot": CreditGrant.objects.get(transaction=grant)}


# --- ledger rows ----------------------------------------------------------------------


@postgres
@pytest.mark.parametrize(
    "change",
    [
        "amount = amount * 2",
        "balance_after = 0",
        "kind = 'adjustment'",
        "reference = 'pi_other'",
        "reason = 'rewritten'",
        "created_at = created_at - interval '1 day'",
    ],
)
def test_a_ledger_row_cannot_be_updated(ledger, change):
    row = ledger["topup"]
    message = refused(f"UPDATE billing_credittransaction SET {change} WHERE id = %s", [row.pk])  # noqa: S608
    assert "Cannot update or delete rows from billing_credittransaction" in message
    assert CreditTransaction.objects.get(pk=row.pk).amount == D("10")


@postgres
def test_a_ledger_row_cannot_be_deleted_even_all_at_once(ledger):
    refused("DELETE FROM billing_credittransaction WHERE id = %s", [ledger["debit"].pk])
    refused("DELETE FROM billing_credittransaction")
    with pytest.raises(DatabaseError), transaction.atomic():
        CreditTransaction.objects.filter(pk=ledger["debit"].pk).update(amount=D("-1"))
    with pytest.raises(DatabaseError), transaction.atomic():
        CreditTransaction.objects.filter(pk=ledger["debit"].pk).delete()
    assert CreditTransaction.objects.count() == 3


# --- grant lots -----------------------------------------------------------------------


@postgres
@pytest.mark.parametrize(
    "change",
    [
        "amount = amount + 1",
        "promotional = false",
        "expires_at = expires_at + interval '30 days'",
        "expires_at = NULL",
        "created_at = created_at - interval '1 day'",
        "remaining = remaining + 1",  # remaining never goes up
        "remaining = amount",
    ],
)
def test_a_grant_lot_refuses_what_no_service_moves(ledger, change):
    lot = ledger["lot"]
    assert "Cannot update rows from billing_creditgrant" in refused(
        f"UPDATE billing_creditgrant SET {change} WHERE id = %s",  # noqa: S608
        [lot.pk],
    )
    assert CreditGrant.objects.get(pk=lot.pk).remaining == D("3")


@postgres
def test_a_grant_lot_refuses_another_wallet_ledger_row_expiry_or_deletion(ledger, other_user):
    lot = ledger["lot"]
    refused("UPDATE billing_creditgrant SET wallet_id = %s WHERE id = %s", [other_user.wallet.pk, lot.pk])
    refused("UPDATE billing_creditgrant SET transaction_id = %s WHERE id = %s", [ledger["topup"].pk, lot.pk])
    refused("DELETE FROM billing_creditgrant WHERE id = %s", [lot.pk])
    # expired_at is set once, never moved or cleared after.
    assert sql("UPDATE billing_creditgrant SET expired_at = now() WHERE id = %s", [lot.pk]) == 1
    refused("UPDATE billing_creditgrant SET expired_at = now() - interval '1 day' WHERE id = %s", [lot.pk])
    refused("UPDATE billing_creditgrant SET expired_at = NULL WHERE id = %s", [lot.pk])


@postgres
def test_a_lot_may_only_lose_credits_and_reconcile_reports_what_the_ledger_does_not_explain(ledger, owner):
    lot = ledger["lot"]
    assert sql("UPDATE billing_creditgrant SET remaining = remaining - 1 WHERE id = %s", [lot.pk]) == 1
    Wallet.objects.filter(user=owner).update(grants_remaining=D("2"))
    out = StringIO()
    with pytest.raises(CommandError, match="still drift"):
        call_command("reconcile_wallets", "--fix", stdout=out)
    assert f"grant {lot.pk}: remaining 2.00000000 != 3.00000000 by the ledger" in out.getvalue()


@postgres
def test_debits_expiry_and_reconcile_still_work_under_the_triggers(owner, monkeypatch):
    wallet_topup(user=owner, amount=D("10"), reference="pi_1")
    wallet_grant(user=owner, amount=D("4"), reason="promo", promotional=True)
    trial = wallet_grant(user=owner, amount=D("5"), reason="trial", expires_at=timezone.now() + timedelta(days=1))
    wallet_debit(user=owner, amount=D("6"), reference="turn-1")  # 4 promo, 2 trial
    travel(monkeypatch, timedelta(days=1, seconds=1))
    wallet_debit(user=owner, amount=D("1"), reference="turn-2")  # expires the trial's 3 first
    assert grants_expire_due() == 0
    lot = CreditGrant.objects.get(transaction=trial)
    assert (lot.remaining, lot.expired_at is not None) == (D("0"), True)
    # reconcile_wallets --fix only appends: a drifted balance becomes an adjustment row.
    Wallet.objects.filter(user=owner).update(balance=D("1.5"))
    out = StringIO()
    call_command("reconcile_wallets", "--fix", stdout=out)
    assert "no drift left" in out.getvalue()
    assert CreditTransaction.objects.filter(kind="adjustment").get().amount == D("-7.5")  # 9 by the ledger
    assert assert_books_balance(owner).balance == D("1.5")


# --- Stripe event records -------------------------------------------------------------


def stripe_event(event_id: str, pi_id: str) -> dict:
    """A payment_intent.succeeded of a PaymentIntent no top-up made (recorded, ignored)."""
    intent = {"id": pi_id, "object": "payment_intent", "amount": 500, "currency": "usd", "metadata": {}}
    return {
        "id": event_id,
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": 1_800_000_000,
        "api_version": "2026-05-27.dahlia",
        "livemode": False,
        "data": {"object": intent},
    }


@pytest.fixture
def pending_event() -> TopUpEvent:
    """A recorded event still pending (a refund before its top-up has the charge id)."""
    return TopUpEvent.objects.create(
        event_id="evt_pending", type="charge.refunded", stripe_created=1_800_000_000, charge_id="ch_1", data={}
    )


@postgres
@pytest.mark.parametrize(
    "change",
    [
        "event_id = 'evt_other'",
        "type = 'charge.dispute.created'",
        "stripe_created = stripe_created + 1",
        "api_version = 'other'",
        "payment_intent_id = 'pi_other'",
        "charge_id = 'ch_other'",
        """data = '{"amount": 1}'""",
        "received_at = received_at - interval '1 day'",
    ],
)
def test_a_stripe_event_keeps_what_stripe_said(pending_event, change):
    message = refused(f"UPDATE billing_topupevent SET {change} WHERE id = %s", [pending_event.pk])  # noqa: S608
    assert "Cannot update rows from billing_topupevent" in message


@postgres
def test_an_applied_stripe_event_is_final_and_none_is_deleted(db):
    assert topup_event_receive(event=stripe_event("evt_1", "pi_elsewhere")) == "not a top-up's PaymentIntent"
    record = TopUpEvent.objects.get(event_id="evt_1")
    assert record.state == TopUpEvent.State.IGNORED  # pending -> ignored: the service's move
    refused("UPDATE billing_topupevent SET state = 'pending' WHERE id = %s", [record.pk])
    refused("UPDATE billing_topupevent SET outcome = 'rewritten' WHERE id = %s", [record.pk])
    refused("UPDATE billing_topupevent SET applied_at = NULL WHERE id = %s", [record.pk])
    refused("DELETE FROM billing_topupevent WHERE id = %s", [record.pk])
    assert topup_event_receive(event=stripe_event("evt_1", "pi_elsewhere")).startswith("already ignored")


@postgres
def test_a_pending_stripe_event_moves_as_applying_it_does(pending_event):
    assert sql("UPDATE billing_topupevent SET outcome = 'pending: still' WHERE id = %s", [pending_event.pk]) == 1
    assert (
        sql(
            "UPDATE billing_topupevent SET state = 'applied', outcome = 'done', applied_at = now() WHERE id = %s",
            [pending_event.pk],
        )
        == 1
    )
    refused("UPDATE billing_topupevent SET state = 'pending' WHERE id = %s", [pending_event.pk])


# --- where the triggers are, and are not ----------------------------------------------


@postgres
def test_the_triggers_are_installed_on_a_schema_built_from_the_models(db):
    """The suite runs --nomigrations: billing's post_migrate installs what its
    migration 0007 installs in production."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE t.tgname LIKE 'pgtrigger_%%' AND c.relname LIKE 'billing_%%'"
        )
        installed = {(table, name.rsplit("_", 1)[0].removeprefix("pgtrigger_")) for table, name in cursor.fetchall()}
    assert installed == {
        ("billing_credittransaction", "ledger_append_only"),
        ("billing_creditgrant", "lot_never_deleted"),
        ("billing_creditgrant", "lot_moves_only_remaining"),
        ("billing_creditgrant", "lot_remaining_only_down"),
        ("billing_topupevent", "event_never_deleted"),
        ("billing_topupevent", "event_keeps_what_stripe_said"),
        ("billing_topupevent", "event_final_once_applied"),
    }


@postgres
@pytest.mark.django_db(transaction=True)
def test_truncate_as_the_test_suite_flushes_is_not_refused(ledger, pending_event):
    """A transactional test's teardown empties the tables with TRUNCATE, which the
    row triggers (UPDATE, DELETE) do not see."""
    sql("TRUNCATE billing_creditgrant, billing_credittransaction, billing_topupevent")
    assert not CreditTransaction.objects.exists() and not TopUpEvent.objects.exists()


def test_sqlite_has_no_triggers_the_services_alone_keep_the_ledger(ledger):
    if connection.vendor != "sqlite":
        pytest.skip("on SQLite only")
    assert sql("UPDATE billing_credittransaction SET reason = 'rewritten' WHERE id = %s", [ledger["topup"].pk]) == 1
