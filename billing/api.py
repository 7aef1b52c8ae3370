from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.permissions import WALLET_GRANT, WALLET_VIEW, KeysScope, OrganizationKeyRole, StaffPermissions
from billing.models import CreditTransaction, ModelPrice
from billing.selectors import (
    model_prices_active,
    transactions_for_user,
    wallet_for_user,
    wallet_recent_transactions,
    wallet_status,
    wallet_status_of,
)
from billing.serializers import (
    AdminWalletSerializer,
    GrantedSerializer,
    GrantSerializer,
    ModelPriceSerializer,
    TransactionSerializer,
    UserWalletSerializer,
)
from billing.services import wallet_grant
from billing.stripe.selectors import auto_top_up_status
from core.exceptions import field_error
from core.pagination import NewestFirstCursorPagination

IDEMPOTENCY_KEY_MAX = 200


class OwnAccount:
    """Whose wallet a view serves: the caller's own (users/me/...). An organization's
    version of the view (organizations.api_billing) overrides `account` with its
    membership check, so both serve the same body through the same code. Through an
    organization's key, `manager_methods` (the ledger, top-ups, auto top-up, cards)
    need its member to be an owner or admin, as the organization's own endpoints do
    (accounts.permissions.OrganizationKeyRole)."""

    permission_classes = [IsAuthenticated, KeysScope, OrganizationKeyRole]
    manager_methods: tuple[str, ...] = ()

    def account(self, request: Request) -> User:
        return request.user


class WalletView(OwnAccount, APIView):
    @extend_schema(responses={200: UserWalletSerializer})
    def get(self, request: Request, **kwargs: object) -> Response:
        account = self.account(request)
        body = {**wallet_status(user=account), "auto_top_up": auto_top_up_status(user=account)}
        return Response(UserWalletSerializer(body).data)


class TransactionListView(OwnAccount, generics.ListAPIView):
    """The caller's own ledger, newest first (cursor pagination: stable while rows arrive)."""

    serializer_class = TransactionSerializer
    pagination_class = NewestFirstCursorPagination
    queryset = CreditTransaction.objects.none()  # for the schema; requests use get_queryset
    manager_methods = ("GET",)

    def get_queryset(self):  # noqa: ANN201
        return transactions_for_user(user=self.account(self.request))


class ModelPriceListView(generics.ListAPIView):
    """Active model aliases with their prices (credits per million tokens)."""

    serializer_class = ModelPriceSerializer
    pagination_class = None
    queryset = ModelPrice.objects.none()

    def get_queryset(self):  # noqa: ANN201
        return model_prices_active()


def _admin_wallet_body(user: User) -> dict:
    wallet = wallet_for_user(user=user)
    body = {
        "user_id": user.pk,
        "email": user.email,
        **wallet_status_of(wallet),
        "transactions": wallet_recent_transactions(wallet=wallet),
    }
    return AdminWalletSerializer(body).data


class AdminAccountView(APIView):
    """A staff view of the wallet of the account the URL names by user id (the
    organization's version, organizations.api_billing, names it by organization id)."""

    permission_classes = [StaffPermissions]

    def account(self, **kwargs: int) -> User:
        return get_object_or_404(User, pk=kwargs["user_id"])


class AdminWalletView(AdminAccountView):
    staff_permissions = WALLET_VIEW

    @extend_schema(responses={200: AdminWalletSerializer})
    def get(self, request: Request, **kwargs: int) -> Response:
        return Response(_admin_wallet_body(self.account(**kwargs)))


class AdminGrantView(AdminAccountView):
    staff_permissions = WALLET_GRANT  # the admin grant page's rule

    @extend_schema(
        request=GrantSerializer,
        responses={201: GrantedSerializer},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="Repeating a grant with the same key returns the first grant and grants nothing more.",
            )
        ],
    )
    def post(self, request: Request, **kwargs: int) -> Response:
        user = self.account(**kwargs)
        serializer = GrantSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        reference = None
        if (key := request.headers.get("Idempotency-Key")) is not None:
            if not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX:
                raise field_error("Idempotency-Key", f"1 to {IDEMPOTENCY_KEY_MAX} characters.")
            # Scoped to the caller, so two staff members' keys never collide.
            reference = f"api:{request.user.pk}:{key}"
        row = wallet_grant(
            user=user,
            amount=serializer.validated_data["amount"],
            reason=serializer.validated_data["reason"],
            actor=request.user,
            reference=reference,
            promotional=serializer.validated_data["promotional"],
            expires_at=serializer.validated_data["expires_at"],
        )
        body = {"transaction": row, "wallet": wallet_status(user=user)}
        return Response(GrantedSerializer(body).data, status=status.HTTP_201_CREATED)
