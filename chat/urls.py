from django.urls import path

from chat import api

urlpatterns = [
    path("sessions", api.SessionListCreateView.as_view(), name="sessions"),
    path("sessions/<int:session_id>", api.SessionDetailView.as_view(), name="session"),
    path("sessions/<int:session_id>/turns", api.SessionTurnsView.as_view(), name="session-turns"),
    path("turns/<uuid:turn_id>", api.TurnDetailView.as_view(), name="turn"),
    path("turns/<uuid:turn_id>/stream", api.TurnStreamView.as_view(), name="turn-stream"),
]
