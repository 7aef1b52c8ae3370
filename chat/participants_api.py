"""Participants API (SPEC 6 `sessions/{id}/participants`): thin views over
chat.participants. Only the session's owner sees or changes them; for anyone else
the session does not exist (404)."""

from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.models import ChatSession, Participant
from chat.participants import (
    participant_create,
    participant_delete,
    participant_get,
    participant_update,
    participants_for_session,
    session_for_owner,
)

SYSTEM_PROMPT_MAX_CHARS = 32_000
POSITION_MAX = 1_000_000


class ParticipantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Participant
        fields = ["id", "name", "model_alias", "system_prompt", "position"]
        read_only_fields = fields


class ParticipantWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    model_alias = serializers.CharField(max_length=64, help_text="An active alias from GET models.")
    system_prompt = serializers.CharField(max_length=SYSTEM_PROMPT_MAX_CHARS, allow_blank=True, required=False)
    position = serializers.IntegerField(
        min_value=0, max_value=POSITION_MAX, required=False, help_text="Speaking order; default: after the last."
    )


def _owned_session(request: Request, session_id: int) -> ChatSession:
    session = session_for_owner(user=request.user, session_id=session_id)
    if session is None:
        raise NotFound()
    return session


class ParticipantListCreateView(generics.ListAPIView):
    serializer_class = ParticipantSerializer
    queryset = Participant.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):  # noqa: ANN201
        return participants_for_session(session=_owned_session(self.request, self.kwargs["session_id"]))

    @extend_schema(request=ParticipantWriteSerializer, responses={201: ParticipantSerializer})
    def post(self, request: Request, session_id: int) -> Response:
        session = _owned_session(request, session_id)
        serializer = ParticipantWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        participant = participant_create(session=session, **serializer.validated_data)
        return Response(ParticipantSerializer(participant).data, status=status.HTTP_201_CREATED)


class ParticipantDetailView(APIView):
    def _get(self, request: Request, session_id: int, participant_id: int) -> Participant:
        participant = participant_get(session=_owned_session(request, session_id), participant_id=participant_id)
        if participant is None:
            raise NotFound()
        return participant

    @extend_schema(request=ParticipantWriteSerializer, responses={200: ParticipantSerializer})
    def patch(self, request: Request, session_id: int, participant_id: int) -> Response:
        participant = self._get(request, session_id, participant_id)
        serializer = ParticipantWriteSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        participant = participant_update(participant=participant, **serializer.validated_data)
        return Response(ParticipantSerializer(participant).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, session_id: int, participant_id: int) -> Response:
        participant_delete(participant=self._get(request, session_id, participant_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
