"""Routes under /v1/ (the OpenAI-compatible base URL)."""

from django.urls import path

from openai_api import views

urlpatterns = [
    path("models", views.ModelListView.as_view(), name="openai-models"),
    path("chat/completions", views.ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("embeddings", views.EmbeddingsView.as_view(), name="openai-embeddings"),
]
