"""Chat's routes under /api/v1/. The names are what reverse() and the
OpenAPI schema use: they do not change."""

from django.urls import path

from chat.api import files, participants, sessions, stream, turns

urlpatterns = [
    path("sessions", sessions.SessionListCreateView.as_view(), name="sessions"),
    path("sessions/<int:session_id>", sessions.SessionDetailView.as_view(), name="session"),
    path("sessions/<int:session_id>/turns", turns.SessionTurnsView.as_view(), name="session-turns"),
    path("turns/<uuid:turn_id>", turns.TurnDetailView.as_view(), name="turn"),
    path("turns/<uuid:turn_id>/stream", stream.TurnStreamView.as_view(), name="turn-stream"),
    path("turns/<uuid:turn_id>/cancel", turns.TurnCancelView.as_view(), name="turn-cancel"),
    path("files", files.FileListCreateView.as_view(), name="files"),
    path("files/<int:file_id>", files.FileDetailView.as_view(), name="file"),
    path(
        "sessions/<int:session_id>/participants",
        participants.ParticipantListCreateView.as_view(),
        name="session-participants",
    ),
    path(
        "sessions/<int:session_id>/participants/<int:participant_id>",
        participants.ParticipantDetailView.as_view(),
        name="session-participant",
    ),
]
