from datetime import UTC, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import User
from billing.models import GRANT_PERMISSION
from billing.services import wallet_grant
from core.exceptions import ApplicationError


class Command(BaseCommand):
    help = "Grant AMOUNT credits to the user with EMAIL (the same service as the admin page and the API)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("email")
        parser.add_argument("amount", help="Credits, e.g. 25 or 12.5 (up to 8 decimal places).")
        parser.add_argument("--reason", required=True, help="Why (kept on the ledger row).")
        parser.add_argument("--actor", help="Email of the staff member granting (recorded as the actor).")
        parser.add_argument("--reference", help="Idempotency key: running again with it grants nothing more.")
        parser.add_argument("--promotional", action="store_true", help="Used before any other credits.")
        expiry = parser.add_mutually_exclusive_group()
        expiry.add_argument("--expires-at", help="When what is left expires: ISO 8601, UTC unless it says otherwise.")
        expiry.add_argument("--expires-in-days", type=int, help="When what is left expires: in this many days.")

    def handle(self, *args, email: str, amount: str, reason: str, actor: str | None, reference: str | None,
               promotional: bool, expires_at: str | None, expires_in_days: int | None, **options) -> None:  # fmt: skip
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            raise CommandError(f"No user with email {email}.")
        actor_user = None
        if actor:
            actor_user = User.objects.filter(email__iexact=actor, is_staff=True).first()
            if actor_user is None or not actor_user.has_perm(GRANT_PERMISSION):
                raise CommandError(f"No staff user with email {actor} allowed to grant credits ({GRANT_PERMISSION}).")
        try:
            row = wallet_grant(
                user=user, amount=amount, reason=reason, actor=actor_user, reference=reference,
                promotional=promotional, expires_at=self._expires_at(expires_at, expires_in_days),
            )  # fmt: skip
        except ApplicationError as exc:
            raise CommandError(exc.message)
        lot = getattr(row, "lot", None)
        terms = "" if lot is None else (
            f" ({'promotional, ' if lot.promotional else ''}"
            f"{'expires ' + lot.expires_at.isoformat() if lot.expires_at else 'never expires'})"
        )  # fmt: skip
        self.stdout.write(
            f"Granted {row.amount} credits{terms} to {user.email} (transaction {row.pk}); balance {row.balance_after}."
        )

    @staticmethod
    def _expires_at(text: str | None, days: int | None) -> datetime | None:
        if days is not None:
            if days <= 0:
                raise CommandError("--expires-in-days must be 1 or more.")
            return timezone.now() + timedelta(days=days)
        if text is None:
            return None
        value = parse_datetime(text)
        if value is None:
            raise CommandError(f"--expires-at {text!r} is not an ISO 8601 date and time.")
        return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)
