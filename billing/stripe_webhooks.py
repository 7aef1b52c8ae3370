"""Stripe webhooks: intake in the web request, processing in Celery.

Intake (`webhook_trigger_record`, called by the view) verifies the signature
locally against the dj-stripe WebhookEndpoint's secret (HMAC of "t.payload", within
the endpoint's tolerance), stores a dj-stripe WebhookEventTrigger (valid, not yet
processed) and sends the processing task on commit. No Stripe API call happens in
the request, so Stripe gets its 2xx at once. A request with a bad signature stores
nothing.

Processing (`webhook_trigger_process`, the task) first runs dj-stripe's own
processing (the Event row and dj-stripe's sync of the objects it names, which may
call Stripe, in dj-stripe's own transaction), then the project's handlers
(billing/topups.py) in one transaction of ours that also marks the trigger
processed; no Stripe call happens inside it. If anything fails, our transaction
rolls back, the trigger keeps the error for the admin, and the task retries with
backoff. Stripe may deliver
one event several times (several triggers): each is processed, and the handlers'
ledger references make the second application a no-op.
"""

import json
import logging
from datetime import timedelta
from traceback import format_exc
from uuid import uuid4

import stripe
from django.db import transaction
from django.utils import timezone
from djstripe.models import Event, WebhookEndpoint, WebhookEventTrigger
from djstripe.settings import djstripe_settings

from billing import stripe_api  # noqa: F401  configures the stripe client
from billing.topups import topup_event_apply

logger = logging.getLogger(__name__)


class WebhookRejected(Exception):
    """The request is not a verifiable Stripe event; answered 400, nothing stored."""


def _parse_event(payload: str) -> dict:
    try:
        data = json.loads(payload)
    except ValueError:
        raise WebhookRejected("The body is not JSON.")
    if not (
        isinstance(data, dict)
        and data.get("object") == "event"
        and isinstance(data.get("id"), str)
        and isinstance(data.get("type"), str)
        and isinstance(data.get("livemode"), bool)
        and isinstance((data.get("data") or {}).get("object"), dict)
    ):
        raise WebhookRejected("The body is not a Stripe event.")
    return data


def webhook_trigger_record(
    *, endpoint: WebhookEndpoint, body: bytes, signature: str, headers: dict[str, str], remote_ip: str
) -> WebhookEventTrigger:
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("The body is not UTF-8.")
    if not endpoint.secret:
        logger.error("Webhook endpoint %s has no signing secret; rejecting.", endpoint.djstripe_uuid)
        raise WebhookRejected("This endpoint has no signing secret.")
    try:
        stripe.WebhookSignature.verify_header(payload, signature, endpoint.secret, endpoint.djstripe_tolerance)
    except stripe.SignatureVerificationError:
        raise WebhookRejected("The Stripe-Signature header does not verify (wrong secret, or too old).")
    _parse_event(payload)
    # One INSERT, committed on its own (no transaction round trips): the task is sent
    # once it is durable.
    trigger = WebhookEventTrigger.objects.create(
        remote_ip=remote_ip,
        headers=headers,
        body=payload,
        valid=True,
        processed=False,
        webhook_endpoint=endpoint,
        stripe_trigger_account_id=endpoint.djstripe_owner_account_id,
    )
    webhook_trigger_enqueue(trigger_id=trigger.pk)
    return trigger


def webhook_trigger_enqueue(*, trigger_id: int) -> None:
    from billing.tasks import process_stripe_webhook

    # robust: the trigger is already stored; if the broker is down the sweeper
    # (requeue_stripe_webhooks) picks it up later, and the webhook still gets its 2xx.
    transaction.on_commit(lambda: process_stripe_webhook.delay(trigger_id), robust=True)


def _api_key(trigger: WebhookEventTrigger) -> str:
    account = trigger.stripe_trigger_account
    livemode = trigger.json_body.get("livemode")
    return (account.default_api_key if account else None) or djstripe_settings.get_default_api_key(livemode)


def webhook_trigger_process(*, trigger_id: int) -> str:
    """Processes one stored trigger. Safe to run twice and concurrently with another
    trigger of the same event."""
    trigger = WebhookEventTrigger.objects.select_related("stripe_trigger_account").filter(pk=trigger_id).first()
    if trigger is None or not trigger.valid:
        return "skipped: no such valid trigger"
    if trigger.processed:
        return "skipped: already processed"
    body = trigger.json_body
    try:
        # dj-stripe first, outside our transaction: it creates the Event once per Stripe
        # event id and runs its sync, which may call Stripe (in its own transaction);
        # for a repeated event it returns the stored Event. A slow Stripe therefore
        # never holds the lock below, and the credits depend only on the signed body.
        event = Event.process(body, api_key=_api_key(trigger))
        with transaction.atomic():
            locked = WebhookEventTrigger.objects.select_for_update().get(pk=trigger_id)
            if locked.processed:
                return "skipped: already processed"
            outcome = topup_event_apply(event_type=body["type"], obj=body["data"]["object"])
            locked.event = event
            locked.processed = True
            locked.exception = ""
            locked.traceback = ""
            locked.save(update_fields=["event", "processed", "exception", "traceback", "updated"])
    except Exception as exc:
        # Kept on the trigger (outside the rolled-back transaction) so staff can see
        # it in the admin and re-run it; the task decides whether to retry.
        WebhookEventTrigger.objects.filter(pk=trigger_id).update(
            exception=f"{exc.__class__.__name__}: {exc}"[:128], traceback=format_exc(), updated=timezone.now()
        )
        raise
    logger.info("Stripe event %s (%s), trigger %s: %s", body["id"], body["type"], trigger_id, outcome)
    return outcome


def webhook_triggers_requeue(*, older_than: timedelta = timedelta(minutes=5), limit: int = 500) -> int:
    """Sends the task again for valid triggers that were never processed nor failed
    (their task was lost: broker down at intake, or purged). Failed ones stay for
    staff to re-run from the admin."""
    cutoff = timezone.now() - older_than
    ids = list(
        WebhookEventTrigger.objects.filter(valid=True, processed=False, exception="", created__lt=cutoff)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    for trigger_id in ids:
        webhook_trigger_enqueue(trigger_id=trigger_id)
    return len(ids)


# --- endpoints (manage.py register_stripe_webhook) ---------------------------------

# The events Parley acts on; an endpoint created at Stripe subscribes to these only.
WEBHOOK_EVENTS = [
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
]


def webhook_path(endpoint: WebhookEndpoint) -> str:
    from django.urls import reverse

    return reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": endpoint.djstripe_uuid})


def webhook_endpoint_register_local(*, secret: str, endpoint_id: str | None = None, url: str = "") -> WebhookEndpoint:
    """Stores (or, for a known endpoint id, updates the secret of) an endpoint whose
    signing secret comes from elsewhere: the Stripe dashboard or `stripe listen`."""
    if not secret.startswith("whsec_"):
        raise ValueError("A webhook signing secret starts with whsec_.")
    from django.conf import settings

    endpoint_id = endpoint_id or f"we_local_{uuid4().hex[:24]}"
    endpoint, created = WebhookEndpoint.objects.get_or_create(
        id=endpoint_id,
        defaults={
            "secret": secret,
            "url": url,
            "enabled_events": WEBHOOK_EVENTS,
            "status": "enabled",
            "api_version": settings.STRIPE_API_VERSION,
            "livemode": settings.STRIPE_LIVE_MODE,
            "metadata": {},
        },
    )
    if not created:
        endpoint.secret = secret
        endpoint.url = url or endpoint.url
        endpoint.save(update_fields=["secret", "url", "djstripe_updated"])
    return endpoint


def webhook_endpoint_create_at_stripe(*, base_url: str) -> WebhookEndpoint:
    """Creates the endpoint at Stripe (which generates its secret) pointing at this
    service's webhook URL under `base_url`, and stores it through dj-stripe's sync."""
    from urllib.parse import urljoin

    from django.conf import settings
    from django.urls import reverse

    djstripe_uuid = uuid4()
    path = reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": djstripe_uuid})
    created = stripe_api.webhook_endpoint_create(
        url=urljoin(base_url, path), enabled_events=WEBHOOK_EVENTS, metadata={"djstripe_uuid": str(djstripe_uuid)}
    )
    endpoint = WebhookEndpoint.sync_from_stripe_data(created, api_key=settings.STRIPE_SECRET_KEY)
    if not endpoint.secret:  # Stripe returns the secret only from this create call
        endpoint.secret = created["secret"]
        endpoint.save(update_fields=["secret"])
    return endpoint
