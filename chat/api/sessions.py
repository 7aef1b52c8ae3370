"""Sessions (`sessions`): thin views over chat.services.sessions. Every
lookup starts from request.user, so another user's session is a 404."""

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.attribution import request_membership_id
from chat import selectors
from chat.api.serializers import SessionSerializer, SessionWriteSerializer
from chat.models import ChatSession
from chat.services.sessions import session_create, session_delete, session_update


def session_or_404(request: Request, session_id: int) -> ChatSession:
    """The requesting user's session, for every endpoint under sessions/{id}."""
    session = selectors.session_get(
        user=request.user, session_id=session_id, membership_id=request_membership_id(request)
    )
    if session is None:
        raise Http404
    return session


class SessionListCreateView(generics.ListAPIView):
    serializer_class = SessionSerializer
    queryset = ChatSession.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):  # noqa: ANN201
        return selectors.sessions_for_user(user=self.request.user, membership_id=request_membership_id(self.request))

    @extend_schema(request=SessionWriteSerializer, responses={201: SessionSerializer})
    def post(self, request: Request) -> Response:
        serializer = SessionWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        session = session_create(
            user=request.user, membership_id=request_membership_id(request), **serializer.validated_data
        )
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailView(APIView):
    @extend_schema(responses={200: SessionSerializer})
    def get(self, request: Request, session_id: int) -> Response:
        return Response(SessionSerializer(session_or_404(request, session_id)).data)

    @extend_schema(request=SessionWriteSerializer, responses={200: SessionSerializer})
    def patch(self, request: Request, session_id: int) -> Response:
        session = session_or_404(request, session_id)
        serializer = SessionWriteSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        session = session_update(session=session, **serializer.validated_data)
        return Response(SessionSerializer(session).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, session_id: int) -> Response:
        session_delete(session=session_or_404(request, session_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
