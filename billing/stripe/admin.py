"""Admin for Stripe top-ups, and a re-run action on dj-stripe's webhook triggers.

Top-ups are read-only here: their state and the credits they moved change only
through Stripe's events. A trigger whose processing failed (its `exception` is set)
stays unprocessed; "Re-run processing" sends it to the worker again, which is safe
because processing is idempotent."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from djstripe.admin.admin import WebhookEventTriggerAdmin
from djstripe.models import APIKey, WebhookEventTrigger

from billing.models import AutoTopUp, TopUp, TopUpEvent
from billing.stripe.tasks import webhook_trigger_enqueue


@admin.register(TopUp)
class TopUpAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "user",
        "amount_usd",
        "credits",
        "mode",
        "status",
        "dispute_status",
        "payment_intent_id",
        "created_at",
    ]
    list_filter = ["mode", "status", "dispute_status", "created_at"]
    search_fields = ["payment_intent_id", "checkout_session_id", "charge_id", "user__email"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request: HttpRequest, obj: TopUp | None = None) -> list[str]:
        return [field.name for field in TopUp._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TopUp | None = None) -> bool:
        return False  # read-only: top-ups move only through Stripe's events

    def has_delete_permission(self, request: HttpRequest, obj: TopUp | None = None) -> bool:
        return False


@admin.register(AutoTopUp)
class AutoTopUpAdmin(admin.ModelAdmin):
    """Users' auto top-up settings and saved cards, read-only: only the user changes
    them (the API), and Stripe's answers (a declined card turns it off)."""

    list_display = [
        "user",
        "enabled",
        "threshold",
        "amount_usd",
        "card",
        "in_flight_top_up",
        "disabled_reason",
    ]
    list_filter = ["enabled"]
    search_fields = ["user__email", "payment_method_id", "customer_id"]
    list_select_related = ["user", "in_flight"]

    @admin.display(description="saved card")
    def card(self, obj: AutoTopUp) -> str:
        return f"{obj.card_brand} ····{obj.card_last4}" if obj.payment_method_id else "none"

    @admin.display(description="in flight")
    def in_flight_top_up(self, obj: AutoTopUp) -> str:
        return f"#{obj.in_flight.pk} {obj.in_flight.status}" if obj.in_flight else "-"

    def get_readonly_fields(self, request: HttpRequest, obj: AutoTopUp | None = None) -> list[str]:
        return [field.name for field in AutoTopUp._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AutoTopUp | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AutoTopUp | None = None) -> bool:
        return False


@admin.register(TopUpEvent)
class TopUpEventAdmin(admin.ModelAdmin):
    """The Stripe events Parley applied to top-ups, and those still pending (no top-up
    has their PaymentIntent or charge yet). Read-only: the sweeper applies a pending
    one once its top-up is known."""

    list_display = ["event_id", "type", "state", "topup", "payment_intent_id", "charge_id", "outcome", "received_at"]
    list_filter = ["state", "type"]
    search_fields = ["event_id", "payment_intent_id", "charge_id"]
    list_select_related = ["topup"]

    def get_readonly_fields(self, request: HttpRequest, obj: TopUpEvent | None = None) -> list[str]:
        return [field.name for field in TopUpEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TopUpEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: TopUpEvent | None = None) -> bool:
        return False


class FailedProcessingFilter(admin.SimpleListFilter):
    title = "processing"
    parameter_name = "processing"

    def lookups(self, request, model_admin):  # noqa: ANN001, ANN201
        return [("failed", "failed (not processed, with an error)"), ("waiting", "waiting (no error yet)")]

    def queryset(self, request, queryset):  # noqa: ANN001, ANN201
        pending = queryset.filter(valid=True, processed=False)
        if self.value() == "failed":
            return pending.exclude(exception="")
        if self.value() == "waiting":
            return pending.filter(exception="")
        return queryset


class ParleyWebhookEventTriggerAdmin(WebhookEventTriggerAdmin):
    actions = ["rerun_processing"]
    list_filter = (FailedProcessingFilter, *WebhookEventTriggerAdmin.list_filter)

    def has_rerun_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("djstripe.change_webhookeventtrigger")

    @admin.action(description="Re-run processing of the selected webhook events", permissions=["rerun"])
    def rerun_processing(self, request: HttpRequest, queryset: QuerySet[WebhookEventTrigger]) -> None:
        sent = skipped = 0
        for trigger_id, valid, processed in queryset.values_list("pk", "valid", "processed"):
            if not valid or processed:
                skipped += 1
                continue
            webhook_trigger_enqueue(trigger_id=trigger_id)
            sent += 1
        self.message_user(request, f"Sent {sent} webhook event(s) for processing; skipped {skipped} (invalid or done).")
        if skipped and not sent:
            self.message_user(request, "Nothing to re-run.", level=messages.WARNING)


if admin.site.is_registered(WebhookEventTrigger):
    admin.site.unregister(WebhookEventTrigger)
admin.site.register(WebhookEventTrigger, ParleyWebhookEventTriggerAdmin)

# Stripe keys live in the environment (STRIPE_SECRET_KEY), never in the database
# (billing/stripe/client.py refuses to store one): no admin page adds them.
if admin.site.is_registered(APIKey):
    admin.site.unregister(APIKey)
