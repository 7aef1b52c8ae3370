"""manage.py register_stripe_webhook: a local endpoint from a known secret, or one
created at (the fake) Stripe."""

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from djstripe.models import WebhookEndpoint, WebhookEventTrigger

from tests.billing.stripe.conftest import post_event

pytestmark = pytest.mark.django_db


def register(*args: str) -> list[str]:
    out = StringIO()
    call_command("register_stripe_webhook", *args, stdout=out)
    return out.getvalue().splitlines()


def post_signed(client, path: str, secret: str, stripe_server) -> int:  # noqa: ANN001
    intent = stripe_server.create_payment_intent(amount=100)
    return post_event(client, path, stripe_server.pay(intent["id"]), secret=secret).status_code


def test_a_secret_is_stored_as_a_local_endpoint_and_its_path_printed(stripe_on, client):
    lines = register("--secret", "whsec_from_stripe_listen_123")

    endpoint = WebhookEndpoint.objects.get()
    path = f"/stripe/webhook/{endpoint.djstripe_uuid}/"
    assert lines == [f"Stored webhook endpoint {endpoint.id}.", path]
    assert endpoint.secret == "whsec_from_stripe_listen_123"
    assert endpoint.api_version == settings.STRIPE_API_VERSION
    assert stripe_on.requests == []  # nothing asked of Stripe
    assert post_signed(client, path, "whsec_from_stripe_listen_123", stripe_on) == 200
    assert WebhookEventTrigger.objects.get().processed is True


def test_a_known_endpoint_id_gets_its_secret_rotated(stripe_on, client):
    first = register("--secret", "whsec_old_secret", "--endpoint-id", "we_123")
    second = register("--secret", "whsec_new_secret", "--endpoint-id", "we_123")

    assert first[-1] == second[-1]  # same endpoint, same path
    assert WebhookEndpoint.objects.get().secret == "whsec_new_secret"
    assert post_signed(client, second[-1], "whsec_old_secret", stripe_on) == 400
    assert post_signed(client, second[-1], "whsec_new_secret", stripe_on) == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Pass --secret whsec_"),
        (("--secret", "sk_test_not_a_webhook_secret"), "starts with whsec_"),
        (("--create",), "--create needs --url https://"),
        (("--create", "--url", "http://insecure.example.com"), "--create needs --url https://"),
        (("--create", "--url", "https://a.example.com", "--secret", "whsec_x"), "takes --url, not --secret"),
    ],
)
def test_bad_arguments_are_refused(stripe_on, args, message):
    with pytest.raises(CommandError, match=message):
        register(*args)
    assert not WebhookEndpoint.objects.exists()


def test_create_makes_the_endpoint_at_stripe_and_stores_its_secret(stripe_on, client):
    lines = register("--create", "--url", "https://parley.example.com")

    endpoint = WebhookEndpoint.objects.get()
    path = f"/stripe/webhook/{endpoint.djstripe_uuid}/"
    assert lines == [f"Created webhook endpoint {endpoint.id} at Stripe: https://parley.example.com{path}", path]
    (created,) = stripe_on.calls("POST", "/v1/webhook_endpoints")
    assert created.params["url"] == f"https://parley.example.com{path}"
    assert created.params["api_version"] == settings.STRIPE_API_VERSION
    assert "payment_intent.succeeded" in created.params["enabled_events"]
    assert created.params["metadata"] == {"djstripe_uuid": str(endpoint.djstripe_uuid)}
    secret = stripe_on.webhook_secret(endpoint.id)
    assert endpoint.secret == secret
    assert post_signed(client, path, secret, stripe_on) == 200


def test_create_needs_stripe(settings, stripe_on):
    settings.STRIPE_SECRET_KEY = ""
    with pytest.raises(CommandError, match="Stripe is not configured"):
        register("--create", "--url", "https://parley.example.com")
