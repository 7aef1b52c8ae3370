"""GET /v1/models and POST /v1/chat/completions: thin views. Parsing is
openai_api.serializers, the turn chat.services.completions, the answer
openai_api.answers; every error goes out in OpenAI's body (openai_api.errors)."""

from functools import partial

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.attribution import Attribution, request_attribution
from billing.selectors import model_prices_active
from chat import streaming
from chat.services.completions import completion_turn_create
from chat.services.embeddings import embedding_routes_for, embedding_turn_create
from core.db import db_release
from core.parsers import NulStorableJSONParser
from openai_api import answers, embeddings, errors
from openai_api.serializers import (
    ChatCompletionRequestSerializer,
    ChatCompletionSerializer,
    EmbeddingListSerializer,
    EmbeddingRequestSerializer,
    ModelListSerializer,
)

TAGS = ["OpenAI-compatible (/v1)"]


class AnyAccept(DefaultContentNegotiation):
    """OpenAI's API answers JSON (or its event stream) whatever `Accept` says; clients
    send `text/event-stream`, `*/*` or nothing. Never a 406 here."""

    def select_renderer(self, request, renderers, format_suffix=None):  # noqa: ANN001, ANN201
        return renderers[0], renderers[0].media_type


class OpenAIView(APIView):
    api_key_scope = "openai"  # accounts.authentication: keys need the `openai` scope here
    renderer_classes = [JSONRenderer]
    # A NUL is stored as U+FFFD (chat.services.completions); a lone surrogate or deep nesting is a 400.
    parser_classes = [NulStorableJSONParser]
    content_negotiation_class = AnyAccept

    def get_exception_handler(self):  # noqa: ANN201
        return errors.exception_handler


def _attribution(request: Request, data: dict) -> Attribution:
    """Who the request is for (`user`, else the end-user header) and what for
    (`metadata.purpose`, else X-Parley-Purpose): accounts.attribution."""
    return request_attribution(
        request, end_user=data.get("user") or "", purpose=(data.get("metadata") or {}).get("purpose", ""),
        end_user_field="user", purpose_field="metadata.purpose",
    )  # fmt: skip


class ModelListView(OpenAIView):
    @extend_schema(
        tags=TAGS, operation_id="openai_models_list", responses={200: ModelListSerializer},
        description="The active model aliases, as OpenAI lists models: chat models and embedding models.",
    )  # fmt: skip
    def get(self, request: Request) -> Response:
        aliases = {}
        for price in model_prices_active().order_by("alias", "created_at"):
            aliases.setdefault(price.alias, price)  # one entry per alias
        data = [
            {"id": alias, "object": "model", "created": int(price.created_at.timestamp()), "owned_by": "parley"}
            for alias, price in aliases.items()
        ]
        return Response({"object": "list", "data": data})


class ChatCompletionsView(OpenAIView):
    @extend_schema(
        tags=TAGS, operation_id="openai_chat_completions_create", request=ChatCompletionRequestSerializer,
        responses={
            200: OpenApiResponse(
                ChatCompletionSerializer,
                description="`chat.completion`; with `stream: true`, `text/event-stream` of `chat.completion.chunk` "
                "events ending with `data: [DONE]` (the usage chunk last with `stream_options.include_usage`). "
                "Headers: X-Parley-Turn (the turn id), X-Parley-Credits-Charged (plain answers).",
            ),
            (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="The streamed answer."),
        },
        description="A chat completion in OpenAI's shapes: one Parley turn (held, run by the worker, charged once, "
        "reference = turn id). `model` is an alias from GET /v1/models; the model's `tool_calls` go back to the "
        "client. `n` must be 1.",
    )  # fmt: skip
    def post(self, request: Request) -> HttpResponse:
        serializer = ChatCompletionRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        completion = serializer.completion_request()
        attribution = _attribution(request, serializer.validated_data)
        if not serializer.validated_data.get("stream"):
            # Under ASGI the wait hands the turn over once it listens (answers.answer_now_or_later).
            hand_over = not getattr(request, "waits_on_event_loop", False)
            turn = completion_turn_create(
                user=request.user, api_key=request.auth, request=completion, attribution=attribution,
                hand_over=hand_over,
            )  # fmt: skip
            return answers.answer_now_or_later(request=request, turn=turn)

        user = request.user
        # The stream's slot first: a request refused for it must not leave a turn behind.
        owner = streaming.stream_owner(request)
        slot = streaming.stream_slot_take(owner=owner)
        if slot is None:
            raise answers.stream_refused(settings.MAX_STREAMS_PER_USER)

        def close() -> None:
            streaming.stream_slot_free(owner=owner, token=slot)

        try:
            # Handed to the worker by the stream once it listens (answers.completion_chunks).
            turn = completion_turn_create(
                user=user, api_key=request.auth, request=completion, attribution=attribution, hand_over=False
            )
        except BaseException:
            close()
            raise
        options = serializer.validated_data.get("stream_options") or {}
        body = answers.completion_chunks(
            turn=turn, user=user, include_usage=bool(options.get("include_usage")), on_close=close
        )
        db_release()  # the stream holds no database connection while it waits
        response = StreamingHttpResponse(body, content_type="text/event-stream; charset=utf-8")
        response.on_abandoned = partial(answers.stream_abandoned, turn=turn, on_close=close)  # core.asgi
        response[answers.TURN_HEADER] = str(turn.pk)
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response


class EmbeddingsView(OpenAIView):
    @extend_schema(
        tags=TAGS, operation_id="openai_embeddings_create", request=EmbeddingRequestSerializer,
        responses={200: OpenApiResponse(
            EmbeddingListSerializer,
            description="A `list` of `embedding` objects, in the inputs' order. Headers: X-Parley-Turn (the turn "
            "id), X-Parley-Credits-Charged.",
        )},
        description="Embeddings in OpenAI's shapes: one Parley turn (source `embeddings`) held at its inputs' "
        "tokens counted with the alias's rule, charged once at the provider's reported tokens and the alias's "
        "input price (reference = turn id). `model` is an alias of kind embedding from GET /v1/models.",
    )  # fmt: skip
    def post(self, request: Request) -> HttpResponse:
        serializer = EmbeddingRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        embedding = serializer.embedding_request()
        attribution = _attribution(request, serializer.validated_data)
        routes = embedding_routes_for(embedding.price)
        turn, count, lease = embedding_turn_create(
            user=request.user, api_key=request.auth, request=embedding, attribution=attribution
        )
        return embeddings.answer(
            http_request=request, turn=turn, request=embedding, count=count, routes=routes, lease=lease,
            encoding_format=serializer.vector_format(),
        )  # fmt: skip
