from django.conf import settings
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey
from accounts.selectors import api_keys_for_user
from accounts.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    RegisteredSerializer,
    RegisterSerializer,
    UserSerializer,
)
from accounts.services import api_key_create, api_key_revoke, user_register


def _created_key_body(api_key, raw_key: str) -> dict:  # noqa: ANN001
    return {**ApiKeySerializer(api_key).data, "key": raw_key}


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
    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def post(self, request: Request) -> Response:
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key, raw_key = api_key_create(user=request.user, name=serializer.validated_data["name"])
        return Response(_created_key_body(api_key, raw_key), status=status.HTTP_201_CREATED)


class ApiKeyListView(generics.ListAPIView):
    serializer_class = ApiKeySerializer
    queryset = ApiKey.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):  # noqa: ANN201
        return api_keys_for_user(user=self.request.user)


class ApiKeyRevokeView(APIView):
    @extend_schema(request=None, responses={200: ApiKeySerializer})
    def delete(self, request: Request, key_id: int) -> Response:
        api_key = get_object_or_404(api_keys_for_user(user=request.user), pk=key_id)
        return Response(ApiKeySerializer(api_key_revoke(api_key=api_key)).data)


class MeView(APIView):
    @extend_schema(responses={200: UserSerializer})
    def get(self, request: Request) -> Response:
        return Response(UserSerializer(request.user).data)
