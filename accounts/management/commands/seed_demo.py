from decimal import Decimal
from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, User, all_scopes
from accounts.services import api_key_create, api_key_revoke, hash_api_key, user_create
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
    {
        # For POST /v1/embeddings (Open WebUI's documents): the local model's vectors.
        "alias": "embed",
        "kind": "embedding",
        "provider": "local",
        "provider_model": "local-embed",
        "input_credits_per_mtok": Decimal("0.1"),
        "output_credits_per_mtok": Decimal("0"),
        "context_tokens": 8192,
        "max_output_tokens": 1,
    },
]


def demo_key_kept(*, user: User, key_file: Path | None) -> str | None:
    """The raw key in `key_file` when it is still one of the demo user's working demo
    keys (not revoked, not expired), else None."""
    if key_file is None or not key_file.is_file():
        return None
    raw_key = key_file.read_text().strip()
    working = ApiKey.objects.filter(
        user=user, name=DEMO_KEY_NAME, key_hash=hash_api_key(raw_key), revoked_at__isnull=True
    ).first()
    if working is None or (working.expires_at is not None and working.expires_at <= timezone.now()):
        return None
    return raw_key


class Command(BaseCommand):
    help = (
        "Demo data: model prices for `fast`, `smart` and `embed` (embeddings) on the local provider, a demo user with "
        f"{DEMO_CREDITS} credits and an API key. Safe to run again: prices and the grant apply once. "
        "With --key-file (bin/serve passes .parley/demo-key) the key is kept in that file and printed "
        "again while it still works; otherwise a new demo key replaces the earlier ones, which are "
        "revoked (keys are stored hashed, so an earlier key cannot be printed again)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--key-file", type=Path, default=None,
            help="keep the demo key in this file (made private) and reuse it while it still works",
        )  # fmt: skip

    @transaction.atomic
    def handle(self, *args, key_file: Path | None = None, **options) -> None:
        for price in DEMO_PRICES:
            model_price_set(**price)
        user = User.objects.filter(email=DEMO_EMAIL).first() or user_create(email=DEMO_EMAIL)
        grant = wallet_grant(user=user, amount=DEMO_CREDITS, reason="Demo credits", reference="seed-demo")
        self.stdout.write(f"Prices:    {', '.join(price['alias'] for price in DEMO_PRICES)} (local provider)")
        self.stdout.write(f"Demo user: {DEMO_EMAIL} ({grant.amount} credits granted once)")
        kept = demo_key_kept(user=user, key_file=key_file)
        if kept is not None:
            self.stdout.write(f"API key:   {kept} (the same as last time, kept in {key_file})")
            return
        # Only the key this command made ("demo"): a key the demo user made through the
        # API keeps working.
        earlier = list(ApiKey.objects.filter(user=user, name=DEMO_KEY_NAME, revoked_at__isnull=True))
        for api_key in earlier:
            api_key_revoke(api_key=api_key)
        _, raw_key = api_key_create(user=user, name=DEMO_KEY_NAME, scopes=all_scopes())  # chat, openai, keys
        stale = key_file is not None and key_file.is_file()  # it held a key that no longer works
        if key_file is not None:
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.touch(mode=0o600)
            key_file.chmod(0o600)  # a secret: readable by its owner only
            key_file.write_text(raw_key + "\n")
        notes = ["new"]
        if earlier:
            prefixes = ", ".join(f"{api_key.prefix}..." for api_key in earlier)
            self.stdout.write(f"Revoked:   the earlier demo key ({prefixes}); use the new one")
            notes.append(f"the earlier demo key ({prefixes}) is revoked")
        elif stale:
            notes.append(f"the key {key_file} held no longer works")
        if key_file is not None:
            notes.append(f"kept in {key_file} for the next run")
        self.stdout.write(f"API key:   {raw_key} ({'; '.join(notes)})")
