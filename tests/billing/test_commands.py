from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.models import ApiKey, User
from billing.models import CreditHold, CreditTransaction, ModelPrice, Wallet
from billing.services import wallet_debit, wallet_grant, wallet_hold_place
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- grant_credits ------------------------------------------------------------------


def test_grant_credits_grants_through_the_service_with_the_actor(owner, grant_staff):
    output = run("grant_credits", "OWNER@example.com", "12.5", "--reason", "beta tester", "--actor", grant_staff.email)
    row = CreditTransaction.objects.get()
    assert (row.kind, row.amount, row.reason, row.actor) == ("grant", Decimal("12.5"), "beta tester", grant_staff)
    assert Wallet.objects.get(user=owner).balance == Decimal("12.5")
    assert "balance 12.50000000" in output


def test_grant_credits_with_a_reference_applies_once(owner):
    for _ in range(2):
        run("grant_credits", owner.email, "3", "--reason", "promo", "--reference", "promo-2026")
    assert Wallet.objects.get(user=owner).balance == Decimal("3")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody@example.com", "5", "--reason", "r"], "No user"),
        (["owner@example.com", "abc", "--reason", "r"], "amount"),
        (["owner@example.com", "0", "--reason", "r"], "amount"),
        (["owner@example.com", "1.123456789", "--reason", "r"], "amount"),
        (["owner@example.com", "10000.5", "--reason", "r"], "amount"),
        (["owner@example.com", "5", "--reason", " "], "reason"),
        (["owner@example.com", "5", "--reason", "r", "--actor", "owner@example.com"], "No staff user"),
    ],
)
def test_grant_credits_refuses_bad_input(owner, settings, args, message):
    settings.ADMIN_GRANT_MAX = Decimal("10000")
    with pytest.raises(CommandError, match=message):
        run("grant_credits", *args)
    assert not CreditTransaction.objects.exists()


# --- reconcile_wallets --------------------------------------------------------------


def test_reconcile_finds_no_drift_after_normal_use(owner, other_user, settings):
    settings.BILLING_OVERDRAFT_LIMIT = Decimal("5")  # other_user's warn-mode turn goes into overdraft
    wallet_grant(user=owner, amount=Decimal("10"), reason="r")
    wallet_hold_place(user=owner, amount=Decimal("2"), reference="turn-1")
    wallet_debit(user=owner, amount=Decimal("1.5"), reference="turn-1", release_hold="turn-1")
    wallet_hold_place(user=other_user, amount=Decimal("2"), reference="turn-2")
    assert "2 wallets checked, no drift." in run("reconcile_wallets")


def test_reconcile_reports_a_raw_sql_drift_and_fix_repairs_it_with_an_adjustment(owner, other_user):
    wallet_grant(user=owner, amount=Decimal("10"), reason="r")
    wallet_grant(user=other_user, amount=Decimal("1"), reason="r")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE billing_wallet SET balance = balance + 2.5 WHERE user_id = %s", [owner.pk])

    out = StringIO()
    with pytest.raises(CommandError, match="1 of 2 wallets drift") as raised:
        call_command("reconcile_wallets", stdout=out)
    assert raised.value.returncode == 1
    report = out.getvalue()
    assert f"user owner@example.com (id {owner.pk}" in report
    assert "balance 12.50000000 != ledger sum 10.00000000 (drift +2.50000000)" in report
    assert "last balance_after 10.00000000" in report
    assert "other@example.com" not in report

    fixed = run("reconcile_wallets", "--fix")
    assert "adjustment +2.50000000" in fixed and "no drift left" in fixed
    adjustment = CreditTransaction.objects.get(kind="adjustment")
    assert (adjustment.amount, adjustment.balance_after) == (Decimal("2.5"), Decimal("12.5"))
    assert Wallet.objects.get(user=owner).balance == Decimal("12.5")  # never rewritten, now explained
    assert "2 wallets checked, no drift." in run("reconcile_wallets")


def test_reconcile_detects_a_ledger_row_written_around_the_service(owner):
    wallet_grant(user=owner, amount=Decimal("5"), reason="r")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_credittransaction (wallet_id, kind, amount, balance_after, reason, created_at)"
            " VALUES (%s, 'grant', 1, 6, 'sneaky', CURRENT_TIMESTAMP)",
            [owner.wallet.pk],
        )
    with pytest.raises(CommandError):
        run("reconcile_wallets")
    run("reconcile_wallets", "--fix")
    assert CreditTransaction.objects.get(kind="adjustment").amount == Decimal("-1")
    assert Wallet.objects.get(user=owner).balance == Decimal("5")
    run("reconcile_wallets")


def test_reconcile_recomputes_a_drifted_held(owner, settings):
    settings.BILLING_OVERDRAFT_LIMIT = Decimal("2")  # warn mode: the hold goes into overdraft
    wallet_hold_place(user=owner, amount=Decimal("2"), reference="turn-1")
    Wallet.objects.filter(user=owner).update(held=Decimal("7"))
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("reconcile_wallets", stdout=out)
    assert "held 7.00000000 != active holds 2.00000000" in out.getvalue()
    assert "held 7.00000000 -> 2.00000000" in run("reconcile_wallets", "--fix")
    assert Wallet.objects.get(user=owner).held == Decimal("2")
    assert not CreditTransaction.objects.exists()
    assert CreditHold.objects.get().status == "active"


def test_reconcile_reports_a_balance_after_it_cannot_repair(owner):
    wallet_grant(user=owner, amount=Decimal("5"), reason="r")
    # Two rows written around the service (a ledger row cannot be rewritten: on
    # PostgreSQL the database refuses it): they cancel out, the last one's balance_after is wrong.
    with connection.cursor() as cursor:
        for amount, balance_after in ((1, 6), (-1, 4)):
            cursor.execute(
                "INSERT INTO billing_credittransaction (wallet_id, kind, amount, balance_after, reason, created_at)"
                " VALUES (%s, 'adjustment', %s, %s, 'sneaky', CURRENT_TIMESTAMP)",
                [owner.wallet.pk, amount, balance_after],
            )
    out = StringIO()
    with pytest.raises(CommandError, match="still drift"):
        call_command("reconcile_wallets", "--fix", stdout=out)
    assert "NOT FIXED" in out.getvalue() and "last balance_after 4.00000000" in out.getvalue()
    assert CreditTransaction.objects.count() == 3  # --fix appended nothing: the sum is right


# --- seed_demo ----------------------------------------------------------------------


def test_seed_demo_creates_prices_and_a_funded_demo_user_once():
    first = run("seed_demo")
    second = run("seed_demo")
    demo = User.objects.get(email="demo@parley.local")
    assert Wallet.objects.get(user=demo).balance == Decimal("100")
    assert CreditTransaction.objects.filter(wallet__user=demo, reference="seed-demo").count() == 1
    assert sorted(ModelPrice.objects.values_list("alias", "provider", "kind", "active")) == [
        ("embed", "local", "embedding", True),
        ("fast", "local", "chat", True),
        ("smart", "local", "chat", True),
    ]
    smart = ModelPrice.objects.get(alias="smart")
    assert (smart.context_tokens, smart.max_output_tokens) == (32768, 4096)
    assert ApiKey.objects.filter(user=demo).count() == 2
    assert "API key:   prl_" in first and "API key:   prl_" in second


def test_seed_demo_restores_a_changed_demo_price_with_a_new_row():
    run("seed_demo")
    fast = ModelPrice.objects.get(alias="fast")
    from billing.services import model_price_change

    model_price_change(price=fast, input_credits_per_mtok=Decimal("9"))
    run("seed_demo")
    active = ModelPrice.objects.get(alias="fast", active=True)
    assert active.input_credits_per_mtok == Decimal("0.5")
    assert ModelPrice.objects.filter(alias="fast").count() == 3


def test_seed_demo_keeps_an_existing_demo_user(db):
    user = make_user("demo@parley.local")
    run("seed_demo")
    assert User.objects.filter(email="demo@parley.local").get() == user


def test_grant_credits_refuses_an_actor_without_the_grant_permission(owner, staff_user):
    with pytest.raises(CommandError, match="allowed to grant"):
        run("grant_credits", owner.email, "1", "--reason", "r", "--actor", staff_user.email)
    assert owner.wallet.transactions.count() == 0
