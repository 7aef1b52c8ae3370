"""Participants API (`sessions/{id}/participants`): thin views over
chat.services.participants. Only the session's owner sees or changes them; for
anyone else the session does not exist (404)."""

from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.api.serializers import ParticipantSerializer, ParticipantWriteSerializer
from chat.api.sessions import session_or_404
from chat.models import Participant
from chat.selectors import participant_get, participants_for_session
from chat.services.participants import participant_create, participant_delete, participant_update


class ParticipantListCreateView(generics.ListAPIView):
    serializer_class = ParticipantSerializer
    queryset = Participant.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):  # noqa: ANN201
        return participants_for_session(session=session_or_404(self.request, self.kwargs["session_id"]))

    @extend_schema(request=ParticipantWriteSerializer, responses={201: ParticipantSerializer})
    def post(self, request: Request, session_id: int) -> Response:
        session = session_or_404(request, session_id)
        serializer = ParticipantWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        participant = participant_create(session=session, **serializer.validated_data)
        return Response(ParticipantSerializer(participant).data, status=status.HTTP_201_CREATED)


class ParticipantDetailView(APIView):
    def _get(self, request: Request, session_id: int, participant_id: int) -> Participant:
        participant = participant_get(session=session_or_404(request, session_id), participant_id=participant_id)
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
