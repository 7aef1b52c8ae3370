"""Top-up endpoints: thin views over billing/stripe/services.py."""

from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.models import TopUp
from billing.money import format_ledger, format_usd
from billing.stripe.client import stripe_require
from billing.stripe.selectors import topups_for_user
from billing.stripe.services import topup_create


@extend_schema_field(OpenApiTypes.STR)
class LedgerString(serializers.Field):
    def to_representation(self, value: Decimal) -> str | None:
        return format_ledger(value)


@extend_schema_field(OpenApiTypes.STR)
class UsdString(serializers.Field):
    def to_representation(self, value: Decimal) -> str | None:
        return format_usd(value)


class TopUpRequestSerializer(serializers.Serializer):
    amount_usd = serializers.DecimalField(
        max_digits=12, decimal_places=2, help_text='US dollars, at most 2 decimal places, e.g. "10.00".'
    )


class TopUpCreatedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    payment_intent_id = serializers.CharField()
    client_secret = serializers.CharField(help_text="For Stripe.js to confirm the payment; shown only here.")
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
            "payment_intent_id",
            "refunded_credits",
            "dispute_status",
            "disputed_credits",
            "error",
            "granted_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class TopUpCreateView(APIView):
    @extend_schema(
        request=TopUpRequestSerializer,
        responses={201: TopUpCreatedSerializer},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="Optional, 1 to 255 characters. A retry with the same key answers the same top-up "
                "and PaymentIntent; the same key for another amount is refused (422).",
            )
        ],
    )
    def post(self, request: Request) -> Response:
        stripe_require()  # 503 before anything else: nothing a client sends can help
        serializer = TopUpRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        topup, client_secret = topup_create(
            user=request.user,
            amount_usd=serializer.validated_data["amount_usd"],
            request_key=request.headers.get("Idempotency-Key"),
        )
        body = {
            "id": topup.pk,
            "payment_intent_id": topup.payment_intent_id,
            "client_secret": client_secret,
            "amount_usd": topup.amount_usd,
            "credits": topup.credits,
            "status": topup.status,
        }
        return Response(TopUpCreatedSerializer(body).data, status=status.HTTP_201_CREATED)


class TopUpListView(generics.ListAPIView):
    serializer_class = TopUpSerializer
    queryset = TopUp.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):  # noqa: ANN201
        return topups_for_user(user=self.request.user)
