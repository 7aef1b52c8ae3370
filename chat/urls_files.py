from django.urls import path

from chat import files_api, participants_api

urlpatterns = [
    path("files", files_api.FileListCreateView.as_view(), name="files"),
    path("files/<int:file_id>", files_api.FileDetailView.as_view(), name="file"),
    path(
        "sessions/<int:session_id>/participants",
        participants_api.ParticipantListCreateView.as_view(),
        name="session-participants",
    ),
    path(
        "sessions/<int:session_id>/participants/<int:participant_id>",
        participants_api.ParticipantDetailView.as_view(),
        name="session-participant",
    ),
]
