from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        # Configures the Stripe client and keeps dj-stripe from storing API keys
        # (billing/stripe/client.py) in every process, whatever it imports first.
        from billing.stripe import client  # noqa: F401
