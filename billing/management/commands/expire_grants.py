from django.core.management.base import BaseCommand

from billing.services import grants_expire_due


class Command(BaseCommand):
    help = (
        "Expire every credit grant whose expires_at has passed (what beat's billing.expire_grants does every "
        "GRANT_EXPIRY_SWEEP_SECONDS): one `expiry` ledger row per grant, less what turns in flight hold. "
        "Safe to run at any time, and twice."
    )

    def handle(self, *args, **options) -> None:
        written = grants_expire_due()
        self.stdout.write(f"{written} grant expiries written.")
