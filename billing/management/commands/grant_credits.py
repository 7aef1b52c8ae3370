from django.core.management.base import BaseCommand, CommandError

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

    def handle(self, *args, email: str, amount: str, reason: str, actor: str | None, reference: str | None,
               **options) -> None:  # fmt: skip
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            raise CommandError(f"No user with email {email}.")
        actor_user = None
        if actor:
            actor_user = User.objects.filter(email__iexact=actor, is_staff=True).first()
            if actor_user is None or not actor_user.has_perm(GRANT_PERMISSION):
                raise CommandError(f"No staff user with email {actor} allowed to grant credits ({GRANT_PERMISSION}).")
        try:
            row = wallet_grant(user=user, amount=amount, reason=reason, actor=actor_user, reference=reference)
        except ApplicationError as exc:
            raise CommandError(exc.message)
        self.stdout.write(
            f"Granted {row.amount} credits to {user.email} (transaction {row.pk}); balance {row.balance_after}."
        )
