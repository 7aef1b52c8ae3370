"""Serializers for chat: request parsing and the API's field names. Money goes out
as strings through billing.money's formatters (ledger 8 places, usage 4)."""

from rest_framework import serializers

from billing.fields import MoneyField
from chat.models import CONTENT_MAX_CHARS, ChatSession, LLMCall, Message, Participant, ToolCall, Turn, UploadedFile
from core.fields import StrictCharField
from core.pagination import BIGINT_MAX

PROMPT_MAX_CHARS = 32_000
SYSTEM_PROMPT_MAX_CHARS = 32_000
POSITION_MAX = 1_000_000


class SessionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ChatSession
        fields = [
            "id", "title", "mode", "source", "model_alias", "orchestrator_alias", "system_prompt", "created_at",
            "updated_at",
        ]  # fmt: skip
        read_only_fields = fields


class SessionWriteSerializer(serializers.Serializer):
    """POST sessions (every field optional) and PATCH sessions/{id}."""

    title = StrictCharField(max_length=200, allow_blank=True, required=False)
    mode = serializers.ChoiceField(choices=ChatSession.Mode.choices, required=False)
    model_alias = StrictCharField(max_length=64, allow_blank=True, required=False)
    orchestrator_alias = StrictCharField(max_length=64, allow_blank=True, required=False)
    system_prompt = StrictCharField(
        max_length=PROMPT_MAX_CHARS, allow_blank=True, required=False, trim_whitespace=False
    )


class TurnCreateSerializer(serializers.Serializer):
    content = StrictCharField(max_length=CONTENT_MAX_CHARS, trim_whitespace=False)
    model_alias = StrictCharField(max_length=64, allow_blank=True, required=False)
    end_user = StrictCharField(
        max_length=256, required=False, allow_blank=True,
        help_text="The end user this turn is for (through an API key): counted against the key's end-user budget. "
        "Else the X-OpenWebUI-User-Id header.",
    )  # fmt: skip
    purpose = StrictCharField(
        max_length=32, required=False, allow_blank=True,
        help_text="A label usage breaks totals down by (e.g. title); else the X-Parley-Purpose header.",
    )  # fmt: skip

    def validate_content(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("This field may not be blank.")
        return value


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = ["id", "role", "participant", "content", "tool_calls", "tool_call_id", "created_at"]


class LLMCallSerializer(serializers.ModelSerializer):
    """One metered call. The token classes are parts of the totals: cached_input_tokens
    and cache_write_tokens of input_tokens, reasoning_tokens of output_tokens. The same
    representation goes out with a turn's `done` event (turn_detail_payload), which the
    OpenAI-compatible endpoint reads its usage from."""

    credits_burned = MoneyField(precision="usage")

    class Meta:
        model = LLMCall
        fields = [
            "id", "purpose", "model_alias", "provider", "provider_model", "input_tokens", "cached_input_tokens",
            "cache_write_tokens", "output_tokens", "reasoning_tokens", "credits_burned", "latency_ms", "status",
            "error", "used_fallback", "finish_reason", "created_at",
        ]  # fmt: skip
        extra_kwargs = {
            "input_tokens": {"help_text": "All input tokens, the cached and cache-write ones included."},
            "cached_input_tokens": {"help_text": "Of input_tokens: read from the provider's cache."},
            "cache_write_tokens": {"help_text": "Of input_tokens: written to the provider's cache."},
            "output_tokens": {"help_text": "All output tokens, the reasoning ones included."},
            "reasoning_tokens": {"help_text": "Of output_tokens: the model's reasoning (thinking)."},
        }


class ToolCallSerializer(serializers.ModelSerializer):
    arguments = serializers.JSONField()

    class Meta:
        model = ToolCall
        fields = ["id", "llm_call", "tool", "arguments", "status", "latency_ms", "created_at"]


class TurnSerializer(serializers.ModelSerializer):
    credits_charged = MoneyField()
    balance_after = MoneyField()

    class Meta:
        model = Turn
        fields = [
            "id", "session", "model_alias", "status", "error", "credits_charged", "balance_after", "low_balance",
            "created_at", "started_at", "finished_at", "cancel_requested_at",
        ]  # fmt: skip
        read_only_fields = fields


class TurnDetailSerializer(TurnSerializer):
    messages = MessageSerializer(many=True, read_only=True)
    llm_calls = LLMCallSerializer(many=True, read_only=True)
    tool_calls = ToolCallSerializer(many=True, read_only=True)

    class Meta(TurnSerializer.Meta):
        fields = [*TurnSerializer.Meta.fields, "messages", "llm_calls", "tool_calls"]
        read_only_fields = fields


# --- participants ----------------------------------------------------------------


class ParticipantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Participant
        fields = ["id", "name", "model_alias", "system_prompt", "position"]
        read_only_fields = fields


class ParticipantWriteSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100)
    model_alias = StrictCharField(max_length=64, help_text="An active alias from GET models.")
    system_prompt = StrictCharField(max_length=SYSTEM_PROMPT_MAX_CHARS, allow_blank=True, required=False)
    position = serializers.IntegerField(
        min_value=0, max_value=POSITION_MAX, required=False, help_text="Speaking order; default: after the last."
    )


# --- files -----------------------------------------------------------------------


class UploadedFileSerializer(serializers.ModelSerializer):
    class Meta:
        model = UploadedFile
        fields = ["id", "name", "content_type", "size", "sha256", "session", "created_at"]
        read_only_fields = fields


class FileUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="Plain text, Markdown, CSV, JSON or PDF, up to MAX_UPLOAD_BYTES.")
    session = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=BIGINT_MAX, help_text="One of your sessions."
    )


def turn_detail_payload(
    *, turn: Turn, messages: list[Message], llm_calls: list[LLMCall], tool_calls: list[ToolCall]
) -> dict:
    """GET turns/{id}'s body from rows already in memory (the worker publishes it with
    `done`, so a waiting request or stream needs no database read)."""
    one_turn, one_message, one_call, one_tool_call = _PAYLOAD
    return {
        **one_turn.to_representation(turn),
        "messages": [one_message.to_representation(message) for message in messages],
        "llm_calls": [one_call.to_representation(call) for call in llm_calls],
        "tool_calls": [one_tool_call.to_representation(tool_call) for tool_call in tool_calls],
    }


# One instance of each, reused for every turn: a ModelSerializer builds its fields
# once per instance, which costs more than the representation itself. Their state
# after that is read-only, so threads can share them.
_PAYLOAD = (TurnSerializer(), MessageSerializer(), LLMCallSerializer(), ToolCallSerializer())
