from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from billing.money import format_price
from billing.price_import import PriceImportError, PriceUpdate, price_map_import, price_map_read
from core.exceptions import ApplicationError


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, Decimal):
        return format_price(value)
    return str(value)


class Command(BaseCommand):
    help = (
        "Create or change model prices from FILE, a copy of LiteLLM's model_prices_and_context_window.json "
        "(download it first: nothing is fetched). Without --only, only the active prices whose alias, or "
        "provider_model less LiteLLM's provider prefix, is a key of the file are changed, and none is created; "
        "with --only, just those keys are read and each one without a price of that alias gets one (alias = "
        "the key). A change is a new price row (the old one kept, inactive); an unchanged price is left alone. "
        "Prints every change (alias: field: old -> new) and writes them in one transaction."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("file", help="LiteLLM's model_prices_and_context_window.json (or a file like it).")
        parser.add_argument(
            "--only", nargs="+", metavar="MODEL", default=[],
            help="Read only these keys of the file, and create a price (alias = the key) for each that has none.",
        )  # fmt: skip
        parser.add_argument(
            "--markup", default="0", metavar="PERCENT",
            help="Multiply every price by (1 + PERCENT/100), e.g. 20 sells at 1.2 times the provider's price.",
        )  # fmt: skip
        parser.add_argument("--dry-run", action="store_true", help="Print the changes and write nothing.")

    def handle(self, *args, file: str, only: list[str], markup: str, dry_run: bool, **options) -> None:
        try:
            plan = price_map_import(price_map=price_map_read(file), only=only, markup=markup, dry_run=dry_run)
        except PriceImportError as exc:
            raise CommandError(str(exc))
        except ApplicationError as exc:
            raise CommandError(f"A price was refused, nothing was written: {exc.message}")
        for update in plan.updates:
            self._write_changes(update)
        for note in plan.notes:
            self.stdout.write(f"note: {note}")
        summary = f"{len(plan.created)} created, {len(plan.changed)} changed, {len(plan.unchanged)} unchanged."
        self.stdout.write(summary + (" Dry run: nothing written." if dry_run else ""))

    def _write_changes(self, update: PriceUpdate) -> None:
        if not update.changes:
            return
        what = "created" if update.current is None else "changed (a new row; the old one kept, inactive)"
        self.stdout.write(f"{update.alias}: {what}, from {update.key!r}")
        for change in update.changes:
            old = "-" if update.current is None else _shown(change.old)
            self.stdout.write(f"{update.alias}: {change.field}: {old} -> {_shown(change.new)}")
