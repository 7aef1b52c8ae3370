"""Top-up endpoints: thin views over billing/stripe/services.py."""

from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.api import OwnAccount
from billing.models import TopUp
from billing.money import format_ledger, format_usd
from billing.serializers import AutoTopUpSerializer
from billing.stripe.client import stripe_require
from billing.stripe.selectors import auto_top_up_status, topups_for_user
from billing.stripe.services import auto_top_up_disable, auto_top_up_set, card_setup_session_start, topup_create


@extend_schema_field(OpenApiTypes.STR)
class LedgerString(serializers.Field):
    def to_representation(self, value: Decimal) -> str | None:
        return format_ledger(value)


@extend_schema_field(OpenApiTypes.STR)
class UsdString(serializers.Field):
    def to_representation(self, value: Decimal) -> str | None:
        return format_usd(value)


URL_HELP = (
    "Checkout mode: where Stripe's hosted page sends the customer back; an absolute http(s) URL "
    "(Stripe's {CHECKOUT_SESSION_ID} placeholder allowed)."
)


class TopUpRequestSerializer(serializers.Serializer):
    amount_usd = serializers.DecimalField(
        max_digits=12, decimal_places=2, help_text='US dollars, at most 2 decimal places, e.g. "10.00".'
    )
    mode = serializers.ChoiceField(
        choices=[TopUp.Mode.PAYMENT_INTENT, TopUp.Mode.CHECKOUT],
        default=TopUp.Mode.PAYMENT_INTENT,
        help_text="payment_intent (default): answers a client_secret for Stripe.js. checkout: answers the url "
        "of a Stripe-hosted Checkout page to open in a browser (needs success_url and cancel_url).",
    )
    success_url = serializers.CharField(required=False, allow_blank=True, max_length=4096, help_text=URL_HELP)
    cancel_url = serializers.CharField(required=False, allow_blank=True, max_length=4096, help_text=URL_HELP)


class TopUpCreatedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    mode = serializers.ChoiceField(choices=TopUp.Mode.choices)
    payment_intent_id = serializers.CharField(
        allow_null=True, help_text="payment_intent mode; in checkout mode null until the customer pays."
    )
    client_secret = serializers.CharField(
        allow_null=True, help_text="payment_intent mode: for Stripe.js to confirm the payment; shown only here."
    )
    checkout_session_id = serializers.CharField(allow_null=True, help_text="checkout mode: the Checkout Session.")
    url = serializers.CharField(
        allow_null=True, help_text="checkout mode: the Stripe-hosted page where the customer pays; shown only here."
    )
    amount_usd = UsdString()
    credits = LedgerString()
    status = serializers.ChoiceField(choices=TopUp.Status.choices)


class TopUpSerializer(serializers.ModelSerializer):
    amount_usd = UsdString()
    credits = LedgerString()
    refunded_credits = LedgerString()
    disputed_credits = LedgerString()

    class Meta:
        model = TopUp
        fields = [
            "id",
            "amount_usd",
            "credits",
            "status",
            "mode",
            "payment_intent_id",
            "checkout_session_id",
            "refunded_credits",
            "dispute_status",
            "disputed_credits",
            "error",
            "granted_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class TopUpCreateView(OwnAccount, APIView):
    """Starts a Stripe top-up. Mode `payment_intent` (the default) answers a PaymentIntent's
    `client_secret` for Stripe.js; mode `checkout` answers the `url` of a Stripe-hosted
    Checkout page (needs `success_url` and `cancel_url`). Credits arrive with Stripe's
    webhook (payment_intent.succeeded or checkout.session.completed), once. 503 when
    Stripe is not configured."""

    manager_methods = ("POST",)

    @extend_schema(
        request=TopUpRequestSerializer,
        responses={201: TopUpCreatedSerializer},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="Optional, 1 to 255 characters. A retry with the same key answers the same top-up "
                "and PaymentIntent (or Checkout Session); the same key for another amount or mode is refused (422).",
            )
        ],
    )
    def post(self, request: Request, **kwargs: object) -> Response:
        account = self.account(request)
        stripe_require()  # 503 before reading the body: nothing a client sends can help
        serializer = TopUpRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        topup, secret_or_url = topup_create(
            user=account,
            amount_usd=data["amount_usd"],
            request_key=request.headers.get("Idempotency-Key"),
            mode=data["mode"],
            success_url=data.get("success_url", ""),
            cancel_url=data.get("cancel_url", ""),
        )
        checkout = topup.mode == TopUp.Mode.CHECKOUT
        body = {
            "id": topup.pk,
            "mode": topup.mode,
            "payment_intent_id": topup.payment_intent_id,
            "client_secret": None if checkout else secret_or_url,
            "checkout_session_id": topup.checkout_session_id,
            "url": secret_or_url if checkout else None,
            "amount_usd": topup.amount_usd,
            "credits": topup.credits,
            "status": topup.status,
        }
        return Response(TopUpCreatedSerializer(body).data, status=status.HTTP_201_CREATED)


class TopUpListView(OwnAccount, generics.ListAPIView):
    manager_methods = ("GET",)
    serializer_class = TopUpSerializer
    queryset = TopUp.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):  # noqa: ANN201
        return topups_for_user(user=self.account(self.request))


# --- auto top-up -----------------------------------------------------------------------


class CardSetupRequestSerializer(serializers.Serializer):
    success_url = serializers.CharField(max_length=4096, help_text=URL_HELP)
    cancel_url = serializers.CharField(max_length=4096, help_text=URL_HELP)


class CardSetupSerializer(serializers.Serializer):
    url = serializers.CharField(
        help_text="A Stripe-hosted Checkout page (setup mode) where the user saves a card; nothing is charged."
    )


class AutoTopUpRequestSerializer(serializers.Serializer):
    threshold = serializers.DecimalField(
        max_digits=18,
        decimal_places=8,
        help_text="Credits: when a settled debit leaves the balance under this, the saved card is charged.",
    )
    amount_usd = serializers.DecimalField(
        max_digits=12, decimal_places=2, help_text="US dollars charged each time, within the top-up limits."
    )


class AutoTopUpView(OwnAccount, APIView):
    """Auto top-up: when a settled debit leaves the balance under `threshold` credits,
    the saved card is charged `amount_usd` off-session (one charge in flight at most),
    credited by Stripe's webhook. PUT turns it on (400 naming `card` without a saved
    card), DELETE turns it off. A declined card turns it off and `disabled_reason`
    says why. An API key needs the `keys` scope to PUT (403 naming it): it charges a
    card; turning it off does not."""

    keys_scope_methods = ("PUT",)
    manager_methods = ("PUT", "DELETE")

    @extend_schema(responses={200: AutoTopUpSerializer})
    def get(self, request: Request, **kwargs: object) -> Response:
        return Response(AutoTopUpSerializer(auto_top_up_status(user=self.account(request))).data)

    @extend_schema(request=AutoTopUpRequestSerializer, responses={200: AutoTopUpSerializer})
    def put(self, request: Request, **kwargs: object) -> Response:
        account = self.account(request)
        serializer = AutoTopUpRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        auto_top_up_set(user=account, **serializer.validated_data)
        return Response(AutoTopUpSerializer(auto_top_up_status(user=account)).data)

    @extend_schema(request=None, responses={200: AutoTopUpSerializer})
    def delete(self, request: Request, **kwargs: object) -> Response:
        account = self.account(request)
        # An organization's says which of its managers turned it off.
        who = "the user" if account == request.user else request.user.email
        auto_top_up_disable(user=account, reason=f"Turned off by {who}.")
        return Response(AutoTopUpSerializer(auto_top_up_status(user=account)).data)


class CardSetupView(OwnAccount, APIView):
    """Saves a card for auto top-up: answers the `url` of a Stripe-hosted Checkout page
    in setup mode (nothing is charged); the card is kept when Stripe reports the
    session completed. Only the latest session started saves its card. An API key
    needs the `keys` scope (403 naming it)."""

    keys_scope_methods = manager_methods = ("POST",)

    @extend_schema(request=CardSetupRequestSerializer, responses={201: CardSetupSerializer})
    def post(self, request: Request, **kwargs: object) -> Response:
        account = self.account(request)
        stripe_require()
        serializer = CardSetupRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        url = card_setup_session_start(user=account, **serializer.validated_data)
        return Response(CardSetupSerializer({"url": url}).data, status=status.HTTP_201_CREATED)
