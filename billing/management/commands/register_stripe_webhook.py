import stripe
from django.core.management.base import BaseCommand, CommandError

from billing.stripe.client import STRIPE_DISABLED_MESSAGE, stripe_enabled
from billing.stripe.services import webhook_endpoint_create_at_stripe, webhook_endpoint_register_local, webhook_path


class Command(BaseCommand):
    help = (
        "Store a Stripe webhook endpoint and print its path. With --secret (from the Stripe dashboard or "
        "`stripe listen`) the endpoint is stored locally; with --create --url https://your.host it is "
        "created at Stripe, which generates the secret."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--secret", help="The endpoint's signing secret, whsec_...")
        parser.add_argument("--endpoint-id", help="Stripe's id of the endpoint (we_...); updates its secret if stored.")
        parser.add_argument("--create", action="store_true", help="Create the endpoint at Stripe.")
        parser.add_argument("--url", default="", help="This service's public base URL, e.g. https://parley.example.com")

    def handle(self, *args, secret: str | None, endpoint_id: str | None, create: bool, url: str, **options) -> None:
        if create:
            if secret or endpoint_id:
                raise CommandError(
                    "--create makes a new endpoint at Stripe; it takes --url, not --secret/--endpoint-id."
                )
            if not url.startswith("https://"):
                raise CommandError("--create needs --url https://... (Stripe only calls public HTTPS URLs).")
            if not stripe_enabled():
                raise CommandError(STRIPE_DISABLED_MESSAGE)
            try:
                endpoint = webhook_endpoint_create_at_stripe(base_url=url)
            except stripe.StripeError as exc:
                raise CommandError(
                    f"Stripe refused to create the endpoint: {exc.user_message or exc.__class__.__name__}"
                )
            self.stdout.write(f"Created webhook endpoint {endpoint.id} at Stripe: {endpoint.url}")
        else:
            if not secret:
                raise CommandError("Pass --secret whsec_... (or --create --url https://...).")
            try:
                endpoint = webhook_endpoint_register_local(secret=secret, endpoint_id=endpoint_id, url=url)
            except ValueError as exc:
                raise CommandError(str(exc))
            self.stdout.write(f"Stored webhook endpoint {endpoint.id}.")
        self.stdout.write(webhook_path(endpoint))
