from django.urls import path

from bench.views import BareInsertView, RoundTripView

urlpatterns = [
    path("insert", BareInsertView.as_view(), name="bench-insert"),
    path("roundtrip", RoundTripView.as_view(), name="bench-roundtrip"),
]
