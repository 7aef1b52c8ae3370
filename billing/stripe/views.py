"""The Stripe webhook endpoint: a thin view over
billing.stripe.services.webhook_trigger_record. It answers 200 as soon as the
verified event is stored; processing happens in Celery (sent on commit)."""

from uuid import UUID

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from djstripe.models import WebhookEndpoint
from djstripe.models.webhooks import get_remote_ip

from billing.stripe.services import WebhookRejected, webhook_trigger_record
from billing.stripe.tasks import webhook_trigger_enqueue


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@method_decorator(csrf_exempt, name="dispatch")
@method_decorator(login_not_required, name="dispatch")
class StripeWebhookView(View):
    http_method_names = ["post"]

    def post(self, request: HttpRequest, uuid: UUID) -> JsonResponse:
        signature = request.headers.get("Stripe-Signature")
        if not signature:
            # Checked first: unsigned requests never touch the database.
            return _error(400, "invalid_signature", "The Stripe-Signature header is missing.")
        endpoint = WebhookEndpoint.objects.filter(djstripe_uuid=uuid).first()
        if endpoint is None:
            return _error(404, "not_found", "No such webhook endpoint.")
        try:
            trigger = webhook_trigger_record(
                endpoint=endpoint,
                body=request.body,
                signature=signature,
                headers=dict(request.headers),
                remote_ip=get_remote_ip(request),
            )
        except WebhookRejected as exc:
            return _error(400, "invalid_signature", str(exc))
        webhook_trigger_enqueue(trigger_id=trigger.pk)
        return JsonResponse({"received": True, "trigger": trigger.pk})
