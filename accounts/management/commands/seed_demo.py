from decimal import Decimal

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import ApiKey, User, all_scopes
from accounts.services import api_key_create, api_key_revoke, user_create
from billing.services import model_price_set, wallet_grant

DEMO_EMAIL = "demo@parley.local"
DEMO_CREDITS = Decimal("100")
DEMO_KEY_NAME = "demo"
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
        f"{DEMO_CREDITS} credits and an API key. Safe to run again: prices and the grant apply once, and "
        "the new demo key replaces the earlier ones, which are revoked (keys are stored hashed, so an "
        "earlier key cannot be printed again)."
    )

    @transaction.atomic
    def handle(self, *args, **options) -> None:
        for price in DEMO_PRICES:
            model_price_set(**price)
        user = User.objects.filter(email=DEMO_EMAIL).first() or user_create(email=DEMO_EMAIL)
        grant = wallet_grant(user=user, amount=DEMO_CREDITS, reason="Demo credits", reference="seed-demo")
        # Only the key this command made ("demo"): a key the demo user made through the
        # API keeps working.
        earlier = list(ApiKey.objects.filter(user=user, name=DEMO_KEY_NAME, revoked_at__isnull=True))
        for api_key in earlier:
            api_key_revoke(api_key=api_key)
        _, raw_key = api_key_create(user=user, name=DEMO_KEY_NAME, scopes=all_scopes())  # chat, openai, keys
        self.stdout.write(f"Prices:    {', '.join(price['alias'] for price in DEMO_PRICES)} (local provider)")
        self.stdout.write(f"Demo user: {DEMO_EMAIL} ({grant.amount} credits granted once)")
        if earlier:
            prefixes = ", ".join(f"{api_key.prefix}..." for api_key in earlier)
            self.stdout.write(f"Revoked:   the earlier demo key ({prefixes}); use the new one")
        self.stdout.write(f"API key:   {raw_key}")
