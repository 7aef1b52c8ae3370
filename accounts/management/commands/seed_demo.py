from decimal import Decimal

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import User
from accounts.services import api_key_create, user_create
from billing.services import model_price_set, wallet_grant

DEMO_EMAIL = "demo@parley.local"
DEMO_CREDITS = Decimal("100")
# Aliases on the offline `local` provider, so the embedded default can chat at once.
DEMO_PRICES = [
    {
        "alias": "fast",
        "provider": "local",
        "provider_model": "local-fast",
        "input_credits_per_mtok": Decimal("0.5"),
        "output_credits_per_mtok": Decimal("1.5"),
        "context_tokens": 8192,
        "max_output_tokens": 1024,
    },
    {
        "alias": "smart",
        "provider": "local",
        "provider_model": "local-smart",
        "input_credits_per_mtok": Decimal("3"),
        "output_credits_per_mtok": Decimal("15"),
        "context_tokens": 32768,
        "max_output_tokens": 4096,
    },
]


class Command(BaseCommand):
    help = (
        "Demo data: model prices for `fast` and `smart` on the local provider, a demo user with "
        f"{DEMO_CREDITS} credits and a new API key. Safe to run again (prices and the grant apply once; "
        "each run adds a new key)."
    )

    @transaction.atomic
    def handle(self, *args, **options) -> None:
        for price in DEMO_PRICES:
            model_price_set(**price)
        user = User.objects.filter(email=DEMO_EMAIL).first() or user_create(email=DEMO_EMAIL)
        grant = wallet_grant(user=user, amount=DEMO_CREDITS, reason="Demo credits", reference="seed-demo")
        _, raw_key = api_key_create(user=user, name="demo")
        self.stdout.write(f"Prices:    {', '.join(price['alias'] for price in DEMO_PRICES)} (local provider)")
        self.stdout.write(f"Demo user: {DEMO_EMAIL} ({grant.amount} credits granted once)")
        self.stdout.write(f"API key:   {raw_key}")
