from django.core.management.base import BaseCommand, CommandError

from billing.models import Wallet
from billing.money import format_ledger
from billing.selectors import WalletDrift, wallet_drifts
from billing.services import wallet_reconcile


def signed(value) -> str:  # noqa: ANN001
    text = format_ledger(value)
    return text if text.startswith("-") else f"+{text}"


def describe(drift: WalletDrift) -> str:
    wallet = drift.wallet
    owner = wallet.user
    if owner.is_organization:
        parts = [f"organization {owner.organization.name} (account id {wallet.user_id}, wallet {wallet.pk}):"]
    else:
        parts = [f"user {owner.email} (id {wallet.user_id}, wallet {wallet.pk}):"]
    if drift.balance_drift:
        parts.append(
            f"balance {format_ledger(wallet.balance)} != ledger sum {format_ledger(drift.ledger_sum)} "
            f"(drift {signed(drift.balance_drift)});"
        )
    if drift.last_row_drift:
        last = format_ledger(drift.last_balance_after) or "none (no rows)"
        parts.append(f"balance {format_ledger(wallet.balance)} != last balance_after {last};")
    if drift.held_drift:
        parts.append(
            f"held {format_ledger(wallet.held)} != active holds {format_ledger(drift.holds_sum)} "
            f"(drift {signed(drift.held_drift)});"
        )
    if drift.grants_drift:
        parts.append(
            f"grants_remaining {format_ledger(wallet.grants_remaining)} != its grants' remaining "
            f"{format_ledger(drift.grants_sum)} (drift {signed(drift.grants_drift)});"
        )
    parts.extend(f"{problem};" for problem in drift.grant_problems)
    return " ".join(parts).rstrip(";")


class Command(BaseCommand):
    help = (
        "Check every wallet: cached balance = sum of its ledger = last balance_after, held = sum of "
        "active holds, grants_remaining = sum of its grants' remaining, and each grant's remaining = what "
        "the ledger (its grant row, the debits in order, its expiry rows) leaves of it. Exits non-zero on "
        "drift. --fix records a balance drift as an `adjustment` ledger row (through billing.services) and "
        "recomputes held and grants_remaining; a grant the ledger does not explain is left for a person."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--fix", action="store_true", help="Repair what drifted (then check again).")

    def handle(self, *args, fix: bool, **options) -> None:
        drifts = list(wallet_drifts())
        checked = Wallet.objects.count()
        for drift in drifts:
            self.stdout.write(f"DRIFT {describe(drift)}")
        if drifts and fix:
            for drift in drifts:
                result = wallet_reconcile(wallet=drift.wallet)
                if result.adjustment is not None:
                    self.stdout.write(
                        f"FIXED wallet {drift.wallet.pk}: adjustment {signed(result.adjustment.amount)} "
                        f"(transaction {result.adjustment.pk})"
                    )
                if result.held_before != result.held_after:
                    self.stdout.write(
                        f"FIXED wallet {drift.wallet.pk}: held {format_ledger(result.held_before)} -> "
                        f"{format_ledger(result.held_after)}"
                    )
            remaining = list(wallet_drifts())
            for drift in remaining:
                self.stdout.write(f"NOT FIXED {describe(drift)}")
            if remaining:
                raise CommandError(f"{len(remaining)} of {checked} wallets still drift after --fix.")
            self.stdout.write(f"{checked} wallets checked; {len(drifts)} repaired, no drift left.")
            return
        if drifts:
            raise CommandError(f"{len(drifts)} of {checked} wallets drift (run with --fix to repair).")
        self.stdout.write(f"{checked} wallets checked, no drift.")
