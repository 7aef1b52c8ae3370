from datetime import UTC, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import User
from billing.models import GRANT_PERMISSION
from billing.services import wallet_grant
from core.exceptions import ApplicationError
from organizations.models import Organization


class Command(BaseCommand):
    help = (
        "Grant AMOUNT credits to the person with EMAIL, or with --org SLUG to that organization's wallet "
        "(the same service as the admin page and the API)."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("email", nargs="?", help="The person's email (or --org instead).")
        parser.add_argument("amount", help="Credits, e.g. 25 or 12.5 (up to 8 decimal places).")
        parser.add_argument("--org", metavar="SLUG", help="Grant to this organization's wallet instead of a person's.")
        parser.add_argument("--reason", required=True, help="Why (kept on the ledger row).")
        parser.add_argument("--actor", help="Email of the staff member granting (recorded as the actor).")
        parser.add_argument("--reference", help="Idempotency key: running again with it grants nothing more.")
        parser.add_argument("--promotional", action="store_true", help="Used before any other credits.")
        expiry = parser.add_mutually_exclusive_group()
        expiry.add_argument("--expires-at", help="When what is left expires: ISO 8601, UTC unless it says otherwise.")
        expiry.add_argument("--expires-in-days", type=int, help="When what is left expires: in this many days.")

    def handle(self, *args, email: str | None, amount: str, reason: str, actor: str | None, reference: str | None,
               org: str | None, promotional: bool, expires_at: str | None, expires_in_days: int | None,
               **options) -> None:  # fmt: skip
        user = self._account(email, org)
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
        to = f"organization {user.organization.name} ({user.organization.slug})" if org else user.email
        self.stdout.write(
            f"Granted {row.amount} credits{terms} to {to} (transaction {row.pk}); balance {row.balance_after}."
        )

    @staticmethod
    def _account(email: str | None, org: str | None) -> User:
        """The wallet's account: the person with `email`, or the organization `org`'s."""
        if (email is None) == (org is None):
            raise CommandError("Name either a person's EMAIL or --org SLUG, not both.")
        if org is not None:
            organization = Organization.objects.select_related("account").filter(slug=org).first()
            if organization is None:
                raise CommandError(f"No organization with slug {org}.")
            return organization.account
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            raise CommandError(f"No user with email {email}.")
        if user.is_organization:  # its address is made up; the slug is what staff know it by
            raise CommandError(f"{email} is an organization's account: use --org {user.organization.slug}.")
        return user

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
