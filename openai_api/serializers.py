"""The chat-completion request, parsed with DRF serializers into the neutral shapes
of chat.llm (CompletionRequest). Field names and limits are OpenAI's; fields it has
that Parley does not use (logprobs, seed, response_format, ...) are ignored, as
OpenAI ignores unknown ones. Text content only: a content part other than text is a
400 naming it."""

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.models import ModelPrice
from billing.selectors import model_price_for_alias
from chat.engine.embedding import MAX_DIMENSIONS, MAX_INPUTS, EmbeddingRequest
from chat.llm import ChatMessage, ToolCallRequest
from chat.models import CONTENT_MAX_CHARS
from chat.services.completions import CompletionRequest
from openai_api.errors import OpenAIError, model_not_found

FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_MESSAGES = 1024
MAX_TOOLS = 128
MAX_STOP = 4
TOOL_CHOICES = ("none", "auto", "required")


TEXT_PART = {
    "type": "object",
    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
    "required": ["type", "text"],
}


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": TEXT_PART}], "nullable": True})
class ContentField(serializers.Field):
    """A message's content: a string, a list of text parts, or null (an assistant that
    only called tools). Parts are joined with newlines. (A NUL is made storable with
    the rest of the request: chat.services.completions.completion_request_storable.)"""

    default_error_messages = {
        "invalid": "Must be a string or a list of content parts.",
        "part": "Only text content parts are supported (type 'text').",
        "too_long": f"Ensure this content has no more than {CONTENT_MAX_CHARS} characters.",
    }

    def to_internal_value(self, data: Any) -> str | None:
        if data is None or isinstance(data, str):
            text = data
        elif isinstance(data, list):
            texts = []
            for part in data:
                kind = part.get("type") if isinstance(part, dict) else None
                key = kind if kind in ("text", "refusal") else None
                if key is None or not isinstance(part.get(key), str):
                    self.fail("part")
                texts.append(part[key])
            text = "\n".join(texts)
        else:
            self.fail("invalid")
        if text is not None and len(text) > CONTENT_MAX_CHARS:
            self.fail("too_long")
        return text

    def to_representation(self, value: Any) -> Any:
        return value


class FunctionCallSerializer(serializers.Serializer):
    name = serializers.RegexField(FUNCTION_NAME)
    arguments = serializers.CharField(allow_blank=True, trim_whitespace=False)


class ToolCallSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=128)
    type = serializers.ChoiceField(choices=["function"], default="function")
    function = FunctionCallSerializer()


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant", "tool"])
    content = ContentField(required=False, allow_null=True)
    name = serializers.CharField(required=False, allow_blank=True, max_length=64)
    tool_calls = ToolCallSerializer(many=True, required=False, allow_null=True)
    tool_call_id = serializers.CharField(required=False, max_length=128)

    def validate(self, attrs: dict) -> dict:
        role, content = attrs["role"], attrs.get("content")
        if role == "tool" and not attrs.get("tool_call_id"):
            raise serializers.ValidationError({"tool_call_id": ["Required for a tool message."]})
        if role == "assistant":
            if content is None and not attrs.get("tool_calls"):
                raise serializers.ValidationError({"content": ["An assistant message needs content or tool_calls."]})
        elif content is None:
            raise serializers.ValidationError({"content": ["This field is required."]})
        return attrs

    def chat_message(self, attrs: dict) -> ChatMessage:
        role = "system" if attrs["role"] == "developer" else attrs["role"]
        calls = tuple(
            ToolCallRequest.from_raw(id=call["id"], name=call["function"]["name"], raw=call["function"]["arguments"])
            for call in attrs.get("tool_calls") or ()
        )
        return ChatMessage(
            role=role, content=attrs.get("content") or "", tool_calls=calls,
            tool_call_id=attrs.get("tool_call_id", "") if role == "tool" else "",
        )  # fmt: skip


class FunctionSerializer(serializers.Serializer):
    name = serializers.RegexField(FUNCTION_NAME)
    description = serializers.CharField(required=False, allow_blank=True, max_length=4096)
    parameters = serializers.DictField(required=False)


class ToolSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["function"])
    function = FunctionSerializer()


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(required=False, default=False)


@extend_schema_field(
    {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP}],
     "nullable": True}
)  # fmt: skip
class StopField(serializers.Field):
    default_error_messages = {"invalid": f"Must be a string or a list of at most {MAX_STOP} strings."}

    def to_internal_value(self, data: Any) -> list[str]:
        if data is None:
            return []
        if isinstance(data, str):
            return [data]
        if isinstance(data, list) and len(data) <= MAX_STOP and all(isinstance(item, str) for item in data):
            return [item for item in data if item]
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "enum": list(TOOL_CHOICES)},
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["function"]},
                    "function": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                },
                "required": ["type", "function"],
            },
        ],
        "nullable": True,
    }
)
class ToolChoiceField(serializers.Field):
    """ "none" | "auto" | "required" | {"type": "function", "function": {"name"}}: as
    (choice, function name)."""

    default_error_messages = {
        # (DRF formats these messages: literal braces are doubled.)
        "invalid": "Must be 'none', 'auto', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}."
    }

    def to_internal_value(self, data: Any) -> tuple[str, str] | None:
        if data is None:
            return None
        if isinstance(data, str) and data in TOOL_CHOICES:
            return data, ""
        if isinstance(data, dict) and data.get("type") == "function" and isinstance(data.get("function"), dict):
            name = data["function"].get("name")
            if isinstance(name, str) and name:
                return "function", name
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class ChatCompletionRequestSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=64)
    messages = MessageSerializer(many=True, allow_empty=False, max_length=MAX_MESSAGES)
    stream = serializers.BooleanField(required=False, default=False, allow_null=True)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    stop = StopField(required=False, allow_null=True)
    tools = ToolSerializer(many=True, required=False, allow_null=True, max_length=MAX_TOOLS)
    tool_choice = ToolChoiceField(required=False, allow_null=True)
    user = serializers.CharField(
        required=False, allow_blank=True, max_length=256,
        help_text="The end user this request is for: counted against the key's end-user budget, shown in usage.",
    )  # fmt: skip
    metadata = serializers.DictField(
        child=serializers.CharField(max_length=512, allow_blank=True), required=False, allow_null=True,
        help_text='Up to 16 key-value labels; `purpose` (e.g. "title") is what usage breaks totals down by.',
    )  # fmt: skip
    n = serializers.IntegerField(required=False, allow_null=True)

    def validate_metadata(self, value: dict | None) -> dict | None:
        if value and len(value) > 16:
            raise serializers.ValidationError("At most 16 keys.")
        return value

    def validate_n(self, value: int | None) -> int | None:
        if value not in (None, 1):
            raise serializers.ValidationError("Only n=1 is supported.")
        return value

    def validate(self, attrs: dict) -> dict:
        choice = attrs.get("tool_choice")
        names = {tool["function"]["name"] for tool in attrs.get("tools") or ()}
        if choice and choice[0] in ("required", "function") and not names:
            raise serializers.ValidationError({"tool_choice": ["Requires `tools`."]})
        if choice and choice[0] == "function" and choice[1] not in names:
            raise serializers.ValidationError({"tool_choice": [f"No tool named '{choice[1]}' in `tools`."]})
        return attrs

    def completion_request(self) -> CompletionRequest:
        """The validated request; 404 when `model` is not an active alias."""
        data = self.validated_data
        price = model_price_for_alias(alias=data["model"])
        if price is None:
            raise model_not_found(data["model"])
        if price.kind != ModelPrice.Kind.CHAT:
            raise OpenAIError(
                f"`{price.alias}` is an {price.kind} model: use it with /v1/embeddings, or name a chat model.",
                param="model", code="invalid_value",
            )  # fmt: skip
        one = MessageSerializer()
        choice, tool_name = data.get("tool_choice") or (None, "")
        return CompletionRequest(
            price=price,
            messages=[one.chat_message(message) for message in data["messages"]],
            tools=[
                {
                    "name": tool["function"]["name"],
                    "description": tool["function"].get("description", ""),
                    "parameters": tool["function"].get("parameters") or {"type": "object", "properties": {}},
                }
                for tool in data.get("tools") or ()
            ],
            max_tokens=data.get("max_completion_tokens") or data.get("max_tokens"),
            temperature=data.get("temperature"), top_p=data.get("top_p"), stop=data.get("stop") or [],
            tool_choice=choice, tool_name=tool_name, user=data.get("user", ""),
        )  # fmt: skip


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "maxItems": MAX_INPUTS},
            {"type": "array", "items": {"type": "integer"}},
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}, "maxItems": MAX_INPUTS},
        ]
    }
)
class EmbeddingInputField(serializers.Field):
    """`input`: a string, a list of strings, a token array or a list of token arrays
    (as OpenAI takes them); as a list of inputs, each a string or a token array."""

    default_error_messages = {
        "invalid": "Must be a string, a list of strings, an array of token ids or a list of arrays of token ids.",
        "empty": "Must not be empty (nor any of its strings or token arrays).",
        "too_many": f"At most {MAX_INPUTS} inputs a request.",
        "token": "Token ids are integers from 0.",
    }

    @staticmethod
    def _tokens(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)

    def to_internal_value(self, data: Any) -> list:
        if isinstance(data, str):
            inputs: list = [data]
        elif isinstance(data, list) and data and self._tokens(data):
            inputs = [data]
        elif isinstance(data, list) and (
            all(isinstance(item, str) for item in data) or all(self._tokens(item) for item in data)
        ):
            inputs = data
        else:
            self.fail("invalid")
        if not inputs or any(len(item) == 0 for item in inputs):
            self.fail("empty")
        if len(inputs) > MAX_INPUTS:
            self.fail("too_many")
        if any(isinstance(item, list) and min(item) < 0 for item in inputs):
            self.fail("token")
        return inputs

    def to_representation(self, value: Any) -> Any:
        return value


class EmbeddingRequestSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=64)
    input = EmbeddingInputField()
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False, allow_null=True)
    dimensions = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_DIMENSIONS,
        help_text="The vectors' length, for models that take it (the local model: any; OpenAI's text-embedding-3).",
    )  # fmt: skip
    user = serializers.CharField(
        required=False, allow_blank=True, allow_null=True, max_length=256,
        help_text="The end user this request is for: counted against the key's end-user budget, shown in usage.",
    )  # fmt: skip

    def embedding_request(self) -> EmbeddingRequest:
        """The validated request; 404 when `model` is not an active alias."""
        data = self.validated_data
        price = model_price_for_alias(alias=data["model"])
        if price is None:
            raise model_not_found(data["model"])
        return EmbeddingRequest(
            price=price, inputs=data["input"], dimensions=data.get("dimensions"), user=data.get("user") or ""
        )

    def vector_format(self) -> str:
        """`encoding_format`, float when left out or null."""
        return self.validated_data.get("encoding_format") or "float"


# --- answers, for the OpenAPI document (openai_api.shapes builds them) ---------------


class PromptTokensDetailsSerializer(serializers.Serializer):
    cached_tokens = serializers.IntegerField(help_text="Input read from the provider's cache (billed apart).")


class CompletionTokensDetailsSerializer(serializers.Serializer):
    reasoning_tokens = serializers.IntegerField(help_text="Output the model spent thinking (priced as output).")


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    prompt_tokens_details = PromptTokensDetailsSerializer()
    completion_tokens_details = CompletionTokensDetailsSerializer()
    cost = serializers.DecimalField(
        max_digits=18, decimal_places=8, coerce_to_string=False,
        help_text="The credits charged for this request (as OpenRouter reports cost); exact, a JSON number.",
    )  # fmt: skip


class AnswerToolCallSerializer(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.CharField()
    function = FunctionCallSerializer()


class AnswerMessageSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField(allow_null=True)
    refusal = serializers.CharField(allow_null=True)
    tool_calls = AnswerToolCallSerializer(many=True, required=False)


class ChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = AnswerMessageSerializer()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.ChoiceField(choices=["stop", "length", "tool_calls"])


class ChatCompletionSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="chat.completion")
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = ChoiceSerializer(many=True)
    usage = UsageSerializer()


class ModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="model")
    created = serializers.IntegerField()
    owned_by = serializers.CharField(default="parley")


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ModelSerializer(many=True)


class EmbeddingSerializer(serializers.Serializer):
    object = serializers.CharField(default="embedding")
    index = serializers.IntegerField()
    embedding = serializers.JSONField(help_text="The vector: floats, or with encoding_format base64 a base64 "
                                      "string of little-endian float32.")  # fmt: skip


class EmbeddingUsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class EmbeddingListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = EmbeddingSerializer(many=True)
    model = serializers.CharField()
    usage = EmbeddingUsageSerializer()
