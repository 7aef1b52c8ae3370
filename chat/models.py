import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

# The longest message a user can send in a turn.
CONTENT_MAX_CHARS = 32_000


class ChatSession(models.Model):
    class Mode(models.TextChoices):
        SINGLE = "single"
        ROUNDTABLE = "roundtable"
        ORCHESTRATOR = "orchestrator"

    class Source(models.TextChoices):
        """Where the session's turns come from: the chat API, the OpenAI-compatible
        endpoint (openai_api), where each request carries its own context, or its
        embeddings (POST /v1/embeddings: a turn per request, one LLM call, no reply)."""

        CHAT = "chat", "Chat API"
        OPENAI = "openai", "OpenAI endpoint"
        EMBEDDINGS = "embeddings", "Embeddings endpoint"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions")
    title = models.CharField(max_length=200, blank=True)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.SINGLE)
    model_alias = models.CharField(max_length=64, blank=True)
    orchestrator_alias = models.CharField(max_length=64, blank=True)
    system_prompt = models.TextField(blank=True)
    summary = models.TextField(blank=True)
    # Messages up to this id are folded into `summary`.
    summary_through_message_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Soft delete: turns, LLM calls and their ledger debits stay, so usage reports and
    # rollups keep matching the raw calls after a user deletes a conversation.
    deleted_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.CHAT)
    # source openai or embeddings: the API key whose requests the session holds (one
    # session per key and source).
    api_key = models.ForeignKey(
        "accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="openai_sessions"
    )
    # Made through an organization's key: the member whose it is. Only that member's
    # keys see it (chat.selectors): the organization's account owns it (`user`), but a
    # conversation is its member's own.
    membership = models.ForeignKey(
        "organizations.Membership", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        db_index=False,
    )  # fmt: skip

    class Meta:
        ordering = ["-updated_at", "-id"]
        verbose_name = "chat session"
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "source"], condition=Q(source__in=["openai", "embeddings"]),
                name="chat_session_api_key_source_unique",
            ),
        ]
        indexes = [
            # Serves "my sessions, most recently active first" (GET sessions).
            models.Index(
                fields=["user", "-updated_at"], condition=Q(deleted_at__isnull=True), name="chat_session_user_updated"
            )
        ]

    def __str__(self) -> str:
        return self.title or f"Session {self.pk}"


class Participant(models.Model):
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="participants")
    name = models.CharField(max_length=100)
    model_alias = models.CharField(max_length=64)
    system_prompt = models.TextField(blank=True)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.model_alias})"


class Turn(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="turns")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="turns")
    model_alias = models.CharField(max_length=64)
    # The price quoted when the turn was accepted: its hold was computed from it, and
    # the reply is charged at it.
    price = models.ForeignKey("billing.ModelPrice", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # Who the request spoke for (an API key's end user) and what for (the client's
    # label: `title`, `tags`...): usage breaks totals down by both.
    end_user = models.ForeignKey(
        "accounts.EndUser", on_delete=models.SET_NULL, null=True, blank=True, related_name="+", db_index=False
    )
    # db_default: a process of the release before (no such column) can still insert.
    purpose = models.CharField(max_length=32, blank=True, default="", db_default="")
    # A turn through an organization's key: the member who made the key (`user` is the
    # organization's account, whose wallet pays).
    membership = models.ForeignKey(
        "organizations.Membership", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        db_index=False,
    )  # fmt: skip
    error = models.TextField(blank=True)
    credits_charged = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    balance_after = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    low_balance = models.BooleanField(default=False)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    # A turn of the OpenAI-compatible endpoint: the request's options that reach the
    # provider (max_tokens, temperature, top_p, stop, tools, tool_choice, user); its
    # context is its own messages. None for chat turns.
    completion_options = models.JSONField(null=True, blank=True)
    # How many times a worker started this turn (more than 1 after a takeover).
    attempts = models.PositiveIntegerField(default=0)
    # The outbox: when run_turn was last handed to the broker (null: not yet, the beat
    # sweep hands it over). The database, not the broker, says what must run.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # The running worker's lease: renewed while it works; once expired, another
    # worker may take the turn over (its worker died). The token names the run.
    lease_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The owner asked to stop it (POST turns/{id}/cancel) while it ran.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="chat_turn_user_idempotency_key_unique",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "completed", "failed", "cancelled"]),
                name="chat_turn_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(credits_charged__isnull=True) | Q(credits_charged__gte=0),
                name="chat_turn_credits_charged_not_negative",
            ),
        ]
        indexes = [
            models.Index(fields=["session", "created_at"], name="chat_turn_session_created"),
            # The fair-use count of a user's turns in flight, asked on every new turn.
            models.Index(
                fields=["user"], condition=Q(status__in=["queued", "running"]), name="chat_turn_user_unfinished"
            ),
            # An end user's turns, newest first (the console's "Their turns"); most turns name none.
            models.Index(
                fields=["end_user", "-created_at"], condition=Q(end_user__isnull=False), name="chat_turn_end_user"
            ),
            # The beat sweep: unfinished turns not handed over, or whose lease ran out.
            models.Index(
                fields=["status", "lease_expires_at"], condition=Q(status__in=["queued", "running"]),
                name="chat_turn_unfinished_sweep",
            ),
        ]

    def __str__(self) -> str:
        return f"Turn {self.pk} ({self.status})"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"
        SYSTEM = "system"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    participant = models.ForeignKey(Participant, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    content = models.TextField()
    # An assistant message that asked for tools: [{"id", "name", "arguments"}], in the
    # provider-neutral shape of chat.llm.ToolCallRequest. Replayed into later contexts.
    tool_calls = models.JSONField(null=True, blank=True)
    # A tool message: the id of the tool call it answers.
    tool_call_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["session", "id"], name="chat_message_session_id")]

    def __str__(self) -> str:
        text = " ".join(self.content.split())
        return f"{self.role}: {text[:60]}{'…' if len(text) > 60 else ''}"


class LLMCall(models.Model):
    """The usage event: one provider call, metered at the price in force."""

    class Purpose(models.TextChoices):
        REPLY = "reply"
        SUMMARY = "summary"
        ORCHESTRATE = "orchestrate"
        TOOL_FOLLOWUP = "tool_followup"
        EMBEDDING = "embedding"

    class Status(models.TextChoices):
        OK = "ok"
        # The stream stopped after output (cut by the provider, or the user's Stop):
        # billed for what was received, as the provider bills it.
        PARTIAL = "partial"
        FAILED = "failed"

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="llm_calls")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    price = models.ForeignKey("billing.ModelPrice", on_delete=models.PROTECT, related_name="+")
    purpose = models.CharField(max_length=16, choices=Purpose.choices, default=Purpose.REPLY)
    model_alias = models.CharField(max_length=64)
    provider = models.CharField(max_length=16)
    provider_model = models.CharField(max_length=128)
    # The upstream that served or failed it (routing.Upstream.name; kept as text, so
    # the record outlives a renamed or removed upstream).
    upstream = models.CharField(max_length=64, blank=True)
    # Token classes as the provider billed them: input counts every input token, of
    # which `cached_input_tokens` were read from its cache and `cache_write_tokens`
    # written to it; output counts every output token, of which `reasoning_tokens`
    # were the model's thinking.
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    # False: the provider reported no usage and the tokens were counted
    # (chat.llm.counting, the price's rule).
    usage_reported = models.BooleanField(default=True)
    # Exact cost (ledger precision) and the display figure (usage precision).
    cost = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    credits_burned = models.DecimalField(max_digits=20, decimal_places=4, default=0)
    # What the upstream charges us for it, by its deployment's cost prices (None: not
    # recorded): the margin figure.
    upstream_cost = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OK)
    # Why a failed call failed, readable (never a secret or a request body).
    error = models.CharField(max_length=500, blank=True)
    used_fallback = models.BooleanField(default=False)
    # Why the model stopped: stop, length or tool_calls (normalised across providers).
    finish_reason = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "LLM call"
        verbose_name_plural = "LLM calls"
        indexes = [
            models.Index(fields=["user", "created_at"], name="chat_llmcall_user_created"),
            models.Index(fields=["model_alias", "created_at"], name="chat_llmcall_alias_created"),
        ]

    def __str__(self) -> str:
        return f"LLM call {self.pk}: {self.purpose} on {self.model_alias}"

    @property
    def billed(self) -> bool:
        """A call that returned output (all of it, or part: a stopped stream) is charged."""
        return self.status != self.Status.FAILED


class ToolCall(models.Model):
    """A tool the model asked for and what it returned (excerpt), in one turn."""

    class Status(models.TextChoices):
        OK = "ok"
        ERROR = "error"

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="tool_calls")
    llm_call = models.ForeignKey(LLMCall, on_delete=models.CASCADE, related_name="tool_calls")
    tool = models.CharField(max_length=64)
    arguments = models.JSONField(default=dict)
    result_excerpt = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.tool} ({self.status})"


class UploadedFile(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="files")
    session = models.ForeignKey(ChatSession, on_delete=models.SET_NULL, null=True, blank=True, related_name="files")
    # Uploaded through an organization's key: the member whose file it is (only their
    # keys and turns read it), as ChatSession.membership.
    membership = models.ForeignKey(
        "organizations.Membership", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        db_index=False,
    )  # fmt: skip
    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    extracted_text = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "uploaded file"
        # F58: every file query filters by owner.
        indexes = [models.Index(fields=["owner", "-created_at"], name="chat_file_owner_created")]

    def __str__(self) -> str:
        return self.name
