"""Read-only staff pages for sessions, turns, LLM calls and tool calls.

Chat history is written only by the turn flow (chat.services) and is evidence for
billing, so nothing here adds, edits or deletes. The lists are built for large
tables: related rows are joined (list_select_related) rather than fetched per row,
filters take their choices from small tables (prices, the tool registry) instead of a
DISTINCT over the big one, no date hierarchy, and an unfiltered list on PostgreSQL
uses the planner's row estimate instead of COUNT(*)."""

import uuid

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Model, Prefetch, QuerySet, UUIDField
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from billing.models import ModelPrice
from chat.models import ChatSession, LLMCall, Message, Participant, ToolCall, Turn
from chat.tools.registry import REGISTRY
from core.admin_display import clipped, timestamp_column
from routing.selectors import upstreams_all

EXACT_COUNT_BELOW = 100_000


class EstimatedCountPaginator(Paginator):
    """COUNT(*) reads a whole PostgreSQL table; for an unfiltered list of a large
    table the planner's estimate (pg_class.reltuples) is close enough for page links."""

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if connection.vendor == "postgresql" and isinstance(queryset, QuerySet) and not queryset.query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [queryset.model._meta.db_table]
                )
                row = cursor.fetchone()
            if row and row[0] >= EXACT_COUNT_BELOW:
                return int(row[0])
        return super().count


class ModelAliasFilter(admin.SimpleListFilter):
    """Choices from the price table (every alias ever priced), not a DISTINCT over the calls."""

    title = "model alias"
    parameter_name = "model_alias"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        aliases = ModelPrice.objects.order_by("alias").values_list("alias", flat=True).distinct()
        return [(alias, alias) for alias in aliases]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(model_alias=self.value()) if self.value() else queryset


class UpstreamFilter(admin.SimpleListFilter):
    """Choices from the upstreams (rows and the kinds' defaults), not a DISTINCT over the calls."""

    title = "upstream"
    parameter_name = "upstream"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name) for name in sorted({upstream.name for upstream in upstreams_all()})]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(upstream=self.value()) if self.value() else queryset


class ToolNameFilter(admin.SimpleListFilter):
    title = "tool"
    parameter_name = "tool"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name) for name in sorted(REGISTRY)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(tool=self.value()) if self.value() else queryset


class ReadOnlyAdmin(admin.ModelAdmin):
    actions = None
    paginator = EstimatedCountPaginator
    show_full_result_count = False  # a second COUNT(*) of the whole table on every filtered page
    show_facets = admin.ShowFacets.NEVER  # a COUNT per filter choice
    list_per_page = 50
    # Lookups the pages link to (a session's turns, a turn's calls) besides the list filters.
    allowed_lookups: tuple[str, ...] = ()

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup in self.allowed_lookups or super().lookup_allowed(lookup, value, request)

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return [field.name for field in self.model._meta.fields] + list(self.readonly_fields)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        """An id (a number, or a turn's UUID) finds that row through the primary key
        index; anything else searches the text fields."""
        term = search_term.strip()
        try:
            key = uuid.UUID(term) if isinstance(self.model._meta.pk, UUIDField) else int(term)
        except ValueError:
            key = None
        if key is not None and (not isinstance(key, int) or 0 < key < 2**63):
            return queryset.filter(pk=key), False
        return super().get_search_results(request, queryset, search_term)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    select_related: tuple[str, ...] = ()

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related(*self.select_related)


def _link(view: str, pk: object, text: object) -> str:
    return format_html('<a href="{}">{}</a>', reverse(f"admin:chat_{view}_change", args=[pk]), text)


class ParticipantInline(ReadOnlyInline):
    model = Participant
    fields = ["position", "name", "model_alias", "system_prompt"]
    readonly_fields = fields
    show_change_link = False


@admin.register(ChatSession)
class ChatSessionAdmin(ReadOnlyAdmin):
    list_display = ["id", "title", "user", "mode", "source", "model_alias", "created_at", "updated_at", "turns_link"]
    list_select_related = ["user"]
    list_filter = ["mode", "source", ModelAliasFilter, "created_at"]
    search_fields = ["title", "user__email"]
    allowed_lookups = ("user__id__exact",)
    inlines = [ParticipantInline]
    readonly_fields = ["turns_link"]

    @admin.display(description="turns")
    def turns_link(self, obj: ChatSession) -> str:
        url = reverse("admin:chat_turn_changelist")
        return format_html('<a href="{}?session__id__exact={}">Turns</a>', url, obj.pk)


class MessageInline(ReadOnlyInline):
    model = Message
    fields = ["id", "role", "participant", "content", "created_at"]
    readonly_fields = fields
    select_related = ("participant",)
    show_change_link = False


def _tokens(total: int, parts: list[tuple[int, str]]) -> str:
    """A token total with its classes under it (only those the call had): the classes
    are parts of the total, and one column each would push the lists past the page."""
    # No-break spaces: a narrow column wraps between the parts, never inside one.
    shown = ", ".join(f"{count} {name}".replace(" ", "\u00a0") for count, name in parts if count)
    if not shown:
        return str(total)
    return format_html('{}<br><span class="quiet token-classes">{}</span>', total, shown)


class CallTokens:
    """The input and output columns of LLM call lists (LLMCallAdmin, LLMCallInline)."""

    @admin.display(description="input tokens", ordering="input_tokens")
    def tokens_in(self, obj: LLMCall) -> str:
        return _tokens(obj.input_tokens, [(obj.cached_input_tokens, "cached"), (obj.cache_write_tokens, "cache write")])

    @admin.display(description="output tokens", ordering="output_tokens")
    def tokens_out(self, obj: LLMCall) -> str:
        return _tokens(obj.output_tokens, [(obj.reasoning_tokens, "reasoning")])


class LLMCallInline(CallTokens, ReadOnlyInline):
    model = LLMCall
    fields = [
        "id", "purpose", "model_alias", "provider_model", "status", "tokens_in", "tokens_out", "usage_reported",
        "credits_burned", "latency_ms", "used_fallback", "created_at",
    ]  # fmt: skip
    readonly_fields = fields


class ToolCallInline(ReadOnlyInline):
    model = ToolCall
    fk_name = "turn"
    fields = ["id", "tool", "arguments", "status", "latency_ms", "result_excerpt", "llm_call_id"]
    readonly_fields = fields


@admin.register(Turn)
class TurnAdmin(ReadOnlyAdmin):
    # One line per row at 1280 px (tests/browser/test_console_lists.py): long text cut
    # to its column with the whole in a tooltip, how long the turn took instead of when it ended.
    list_display = [
        "short_id", "created", "user_email", "session_link", "status", "models", "credits_charged",
        "balance_after", "low_balance", "took",
    ]  # fmt: skip
    list_select_related = ["user", "session", "membership__user", "membership__organization"]
    # The aliases of each turn's calls: one more query per page, whatever its length.
    list_prefetch = Prefetch("llm_calls", queryset=LLMCall.objects.only("id", "turn_id", "model_alias").order_by("id"))
    list_filter = ["status", ModelAliasFilter, "low_balance", "created_at"]
    search_fields = ["user__email", "session__title", "idempotency_key"]
    allowed_lookups = (
        "session__id__exact", "user__id__exact", "end_user__id__exact", "purpose__exact", "membership__id__exact",
    )  # fmt: skip
    inlines = [MessageInline, LLMCallInline, ToolCallInline]

    @admin.display(description="turn", ordering="id")
    def short_id(self, obj: Turn) -> str:
        return str(obj.pk)[:8]

    created = timestamp_column("created_at", "created at")

    @admin.display(description="user", ordering="user__email")
    def user_email(self, obj: Turn) -> str:
        """The person; through an organization's key, the organization and its member."""
        if obj.membership_id is not None:
            member = obj.membership
            return clipped(f"{member.organization.name}: {member.user.email}", width="10em")
        return clipped(obj.user.email, width="10em")

    @admin.display(description="session", ordering="session_id")
    def session_link(self, obj: Turn) -> str:
        return _link("chatsession", obj.session_id, clipped(obj.session, width="7em"))

    @admin.display(description="took")
    def took(self, obj: Turn) -> str:
        if obj.finished_at is None:
            return "-"
        seconds = (obj.finished_at - obj.created_at).total_seconds()
        return format_html('<span title="finished {}">{} s</span>', obj.finished_at.isoformat(), f"{seconds:.1f}")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related(self.list_prefetch)

    @admin.display(description="models", ordering="model_alias")
    def models(self, obj: Turn) -> str:
        """Every alias that took part (a round table's speakers), else the turn's own."""
        aliases = ", ".join(dict.fromkeys(call.model_alias for call in obj.llm_calls.all())) or obj.model_alias
        return clipped(aliases, width="9em")


@admin.register(LLMCall)
class LLMCallAdmin(CallTokens, ReadOnlyAdmin):
    list_display = [
        "id", "created_at", "user", "model_alias", "purpose", "status", "tokens_in", "tokens_out", "usage_reported",
        "credits_burned", "latency_ms", "used_fallback", "upstream", "turn_link",
    ]  # fmt: skip
    list_select_related = ["user"]
    list_filter = [
        ModelAliasFilter, UpstreamFilter, "purpose", "status", "provider", "usage_reported", "used_fallback",
        "created_at",
    ]  # fmt: skip
    search_fields = ["user__email", "provider_model"]
    allowed_lookups = ("turn__id__exact", "user__id__exact")
    ordering = ["-id"]  # newest first, along the primary key

    @admin.display(description="turn", ordering="turn_id")
    def turn_link(self, obj: LLMCall) -> str:
        return _link("turn", obj.turn_id, str(obj.turn_id)[:8])


@admin.register(ToolCall)
class ToolCallAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "tool", "status", "latency_ms", "user", "turn_link", "llm_call_link"]
    list_select_related = ["turn__user"]
    list_filter = [ToolNameFilter, "status", "created_at"]
    search_fields = ["tool", "turn__user__email", "result_excerpt"]
    allowed_lookups = ("turn__id__exact",)
    ordering = ["-id"]

    @admin.display(description="user")
    def user(self, obj: ToolCall) -> str:
        return obj.turn.user.email

    @admin.display(description="turn", ordering="turn_id")
    def turn_link(self, obj: ToolCall) -> str:
        return _link("turn", obj.turn_id, str(obj.turn_id)[:8])

    @admin.display(description="LLM call", ordering="llm_call_id")
    def llm_call_link(self, obj: ToolCall) -> str:
        return _link("llmcall", obj.llm_call_id, obj.llm_call_id)
