"""Stripe on, against the fake Stripe server (tests/fakes/stripe_server.py), with a
webhook endpoint whose secret signs the test's events."""

from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.db import connection
from django.test import TestCase
from djstripe.models import WebhookEndpoint

from accounts.models import all_scopes
from billing.stripe.services import webhook_endpoint_register_local, webhook_path
from tests.conftest import client_for
from tests.fakes.stripe_server import FakeStripe, sign_event

WEBHOOK_SECRET = "whsec_test_parley_0123456789abcdef"


@pytest.fixture(autouse=True)
def _wallets_match_their_ledger(request) -> Iterator[None]:  # noqa: ANN001
    """After every test: each wallet equals its ledger (what reconcile_wallets checks)."""
    uses_db = bool(request.node.get_closest_marker("django_db"))
    if "celery_worker" in request.fixturenames:
        # Set up before this fixture, so torn down (flushed) after the check.
        request.getfixturevalue("transactional_db")
        uses_db = True
    yield
    if uses_db:
        from billing.selectors import wallet_drifts

        assert list(wallet_drifts()) == []


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture
def stripe_on(settings, stripe_server: FakeStripe) -> FakeStripe:  # noqa: ANN001
    """Stripe configured (key, API base) for this process; billing.stripe.client picks
    the settings up through setting_changed."""
    stripe_server.reset()
    settings.STRIPE_SECRET_KEY = stripe_server.api_key
    settings.STRIPE_API_BASE = stripe_server.url
    settings.STRIPE_LIVE_MODE = False
    return stripe_server


@pytest.fixture
def endpoint(stripe_on: FakeStripe) -> WebhookEndpoint:
    return webhook_endpoint_register_local(secret=WEBHOOK_SECRET, endpoint_id="we_test_parley")


def post_event(
    client,  # noqa: ANN001
    path: str,
    event: dict,
    *,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
    body: str | None = None,
    process: bool = True,
):  # noqa: ANN201
    """Posts `event` the way Stripe does: the JSON body with a real Stripe-Signature.
    With `process`, the processing task the request sends on commit runs at once (in
    a test wrapped in a transaction, commit hooks would otherwise never fire)."""
    signed_body, header = sign_event(event, secret, timestamp)
    with TestCase.captureOnCommitCallbacks(execute=process):
        return client.post(
            path,
            data=signed_body if body is None else body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=header,
        )


class Webhooks:
    """The test endpoint's path and a poster for it."""

    def __init__(self, client, endpoint: WebhookEndpoint) -> None:  # noqa: ANN001
        self.client = client
        self.endpoint = endpoint
        self.path = webhook_path(endpoint)

    def post(self, event: dict, **kwargs):  # noqa: ANN003, ANN201
        return post_event(self.client, self.path, event, **kwargs)


@pytest.fixture
def webhooks(client, endpoint: WebhookEndpoint) -> Webhooks:  # noqa: ANN001
    return Webhooks(client, endpoint)


@pytest.fixture
def buyer_client(owner):  # noqa: ANN001, ANN201
    # Every scope: saving a card and turning auto top-up on need `keys`.
    return client_for(owner, scopes=all_scopes())


def balance_of(user) -> Decimal:  # noqa: ANN001
    from billing.models import Wallet

    return Wallet.objects.get(user=user).balance


def ledger_of(user) -> list[tuple[str, Decimal, str]]:  # noqa: ANN001
    from billing.models import CreditTransaction

    return list(
        CreditTransaction.objects.filter(wallet__user=user).order_by("id").values_list("kind", "amount", "reference")
    )


def in_transaction() -> bool:
    return connection.in_atomic_block
