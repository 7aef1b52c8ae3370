from django.conf import settings
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey, EndUser, User
from accounts.permissions import KeysScope, OrganizationKeyRole, key_member
from accounts.selectors import api_keys_for_user, end_users_for_user
from accounts.serializers import (
    AccountLimitsSerializer,
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeyLimitsSerializer,
    ApiKeySerializer,
    EndUserOverrideSerializer,
    EndUserSerializer,
    MeSerializer,
    RegisteredSerializer,
    RegisterSerializer,
    SpendCapSerializer,
    UserSerializer,
)
from accounts.services import (
    api_key_create,
    api_key_limits_set,
    api_key_revoke,
    end_user_override_clear,
    end_user_override_set,
    user_register,
    user_spend_cap_set,
)
from billing.limits import account_spend, api_keys_spend, end_users_spend
from core.exceptions import field_error
from organizations.services import organization_api_key_create


def _created_key_body(api_key, raw_key: str) -> dict:  # noqa: ANN001
    return {**ApiKeySerializer(api_key).data, "key": raw_key}


def _keys_of(request: Request) -> QuerySet[ApiKey]:
    """The keys the caller's key may see and revoke: the account's, except that an
    organization's key of a plain member reaches only the keys that member made
    (owners' and admins' keys reach all of the organization's)."""
    keys = api_keys_for_user(user=request.user)
    member = key_member(request)
    if member is not None and not member.manages:
        keys = keys.filter(membership=member)
    return keys


class RegisterView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=RegisterSerializer, responses={201: RegisteredSerializer})
    def post(self, request: Request) -> Response:
        if not settings.ALLOW_REGISTRATION:
            raise NotFound("Registration is closed.")
        serializer = RegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        user, api_key, raw_key = user_register(email=data["email"], password=data["password"], key_name=data["key_name"])
        body = {"user": UserSerializer(user).data, "api_key": _created_key_body(api_key, raw_key)}
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyCreateView(APIView):
    permission_classes = [IsAuthenticated, KeysScope]
    keys_scope_methods = ("POST",)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer},
        description="Makes a key (scopes chat and openai unless `scopes` says otherwise). An API key needs the "
        "`keys` scope for this (403 naming it). Through an organization's key, the new key is the "
        "organization's too, made by the same member.",
    )
    def post(self, request: Request) -> Response:
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        member = key_member(request)
        if member is not None:  # an org key makes keys for its member, never an unattributed one
            api_key, raw_key = organization_api_key_create(member=member, **serializer.validated_data)
        else:
            api_key, raw_key = api_key_create(user=request.user, **serializer.validated_data)
        return Response(_created_key_body(api_key, raw_key), status=status.HTTP_201_CREATED)


class ApiKeyListView(generics.ListAPIView):
    serializer_class = ApiKeySerializer
    queryset = ApiKey.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):  # noqa: ANN201
        return _keys_of(self.request)

    def get_serializer(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        # Every key's spend of the page in one query.
        if args:
            kwargs.setdefault("context", self.get_serializer_context())["spend"] = api_keys_spend(api_keys=list(args[0]))
        return super().get_serializer(*args, **kwargs)


class ApiKeyDetailView(APIView):
    permission_classes = [IsAuthenticated, KeysScope, OrganizationKeyRole]
    keys_scope_methods = manager_methods = ("PATCH",)

    def _key(self, request: Request, key_id: int) -> ApiKey:
        return get_object_or_404(_keys_of(request), pk=key_id)

    @extend_schema(responses={200: ApiKeySerializer})
    def get(self, request: Request, key_id: int) -> Response:
        return Response(ApiKeySerializer(self._key(request, key_id)).data)

    @extend_schema(
        request=ApiKeyLimitsSerializer,
        responses={200: ApiKeySerializer},
        description="Changes the key's limits: only the fields sent; null clears a limit. 422 for a revoked key. "
        "An API key needs the `keys` scope for this (403 naming it); an organization's key, an owner's or admin's "
        "(403 naming the role).",
    )
    def patch(self, request: Request, key_id: int) -> Response:
        api_key = self._key(request, key_id)
        serializer = ApiKeyLimitsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(ApiKeySerializer(api_key_limits_set(api_key=api_key, **serializer.validated_data)).data)

    @extend_schema(request=None, responses={200: ApiKeySerializer}, description="Revokes the key.")
    def delete(self, request: Request, key_id: int) -> Response:
        return Response(ApiKeySerializer(api_key_revoke(api_key=self._key(request, key_id))).data)


def _end_users_of(request: Request, api_key_id: int | None = None) -> QuerySet[EndUser]:
    """The end users of the keys the caller's key may see (_keys_of)."""
    end_users = end_users_for_user(user=request.user, api_key_id=api_key_id)
    member = key_member(request)
    if member is not None and not member.manages:
        end_users = end_users.filter(api_key__membership=member)
    return end_users


class EndUserListView(generics.ListAPIView):
    serializer_class = EndUserSerializer
    queryset = EndUser.objects.none()  # for the schema; requests use get_queryset

    @extend_schema(
        parameters=[OpenApiParameter("api_key", int, description="Only this key's end users.")],
        description="The end users your keys' requests named (the OpenAI `user` field or the X-OpenWebUI-User-Id "
        "header), with the budget that applies and their spend in its window.",
    )
    def get(self, request: Request, *args, **kwargs) -> Response:  # noqa: ANN002, ANN003
        return super().get(request, *args, **kwargs)

    def get_queryset(self):  # noqa: ANN201
        api_key = self.request.query_params.get("api_key")
        if api_key is not None and not (api_key.isascii() and api_key.isdigit() and len(api_key) < 19):
            raise field_error("api_key", "An API key id (a number).")
        return _end_users_of(self.request, api_key_id=int(api_key) if api_key else None)

    def get_serializer(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        # Every end user's spend of the page in one query.
        if args:
            kwargs.setdefault("context", self.get_serializer_context())["spend"] = end_users_spend(
                end_users=list(args[0])
            )
        return super().get_serializer(*args, **kwargs)


class EndUserDetailView(APIView):
    permission_classes = [IsAuthenticated, KeysScope, OrganizationKeyRole]
    keys_scope_methods = manager_methods = ("PUT", "DELETE")

    def _end_user(self, request: Request, end_user_id: int) -> EndUser:
        return get_object_or_404(_end_users_of(request), pk=end_user_id)

    @extend_schema(responses={200: EndUserSerializer})
    def get(self, request: Request, end_user_id: int) -> Response:
        return Response(EndUserSerializer(self._end_user(request, end_user_id)).data)

    @extend_schema(
        request=EndUserOverrideSerializer, responses={200: EndUserSerializer},
        description="Overrides this end user's budget or blocks them: only the fields sent. An API key needs the "
        "`keys` scope for this (403 naming it); an organization's key, an owner's or admin's (403 naming the role).",
    )  # fmt: skip
    def put(self, request: Request, end_user_id: int) -> Response:
        end_user = self._end_user(request, end_user_id)
        serializer = EndUserOverrideSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(EndUserSerializer(end_user_override_set(end_user=end_user, **serializer.validated_data)).data)

    @extend_schema(
        request=None, responses={200: EndUserSerializer},
        description="Removes the override and any block: the key's end-user budget applies again.",
    )  # fmt: skip
    def delete(self, request: Request, end_user_id: int) -> Response:
        return Response(EndUserSerializer(end_user_override_clear(end_user=self._end_user(request, end_user_id))).data)


class AccountLimitsView(APIView):
    permission_classes = [IsAuthenticated, KeysScope, OrganizationKeyRole]
    keys_scope_methods = manager_methods = ("PATCH",)

    @extend_schema(responses={200: AccountLimitsSerializer})
    def get(self, request: Request) -> Response:
        return Response(AccountLimitsSerializer(limits_body(request.user)).data)

    @extend_schema(
        request=SpendCapSerializer,
        responses={200: AccountLimitsSerializer},
        description="Sets the account's spending cap: only the fields sent; null clears it. An API key needs the "
        "`keys` scope for this (403 naming it); an organization's key, an owner's or admin's (403 naming the role).",
    )
    def patch(self, request: Request) -> Response:
        serializer = SpendCapSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = user_spend_cap_set(user=request.user, **serializer.validated_data)
        return Response(AccountLimitsSerializer(limits_body(user)).data)


def limits_body(user: User) -> dict:
    """What GET users/me/limits (and orgs/{id}/limits) shows of an account's cap."""
    if user.spend_cap_credits is None:  # no cap: nothing is counted
        return {"spend_cap_credits": None, "spend_cap_window": user.spend_cap_window, "spent": None, "held": None,
                "resets_at": None}  # fmt: skip
    spend = account_spend(user=user)
    return {
        "spend_cap_credits": user.spend_cap_credits,
        "spend_cap_window": user.spend_cap_window,
        "spent": spend.spent,
        "held": spend.held,
        "resets_at": spend.resets_at,
    }


class MeView(APIView):
    @extend_schema(
        responses={200: MeSerializer},
        description="The account the key spends: a person's (`kind` person), or an organization's (`kind` "
        "organization, with the organization and the member who made the key).",
    )
    def get(self, request: Request) -> Response:
        return Response(MeSerializer(request.user, context={"member": key_member(request)}).data)
