from decimal import Decimal

from django.contrib.auth.password_validation import validate_password
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import ApiKey, ApiKeyScope, EndUser, SpendWindow, User
from billing.fields import MoneyField
from billing.limits import WindowSpend, api_keys_spend, end_user_budget, end_users_spend
from billing.money import format_ledger
from core.fields import StrictCharField

RATE_MAX = 2**31 - 1  # what the PositiveIntegerField holds
MONEY_SCHEMA = {"type": "string", "format": "decimal", "example": "1.25000000"}


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "email", "is_staff", "date_joined"]
        read_only_fields = fields


class MeOrganizationSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(read_only=True)
    slug = serializers.CharField(read_only=True)


class MeMemberSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True, help_text="The membership's id (orgs/{org_id}/members/{id}).")
    user_id = serializers.IntegerField(read_only=True)
    email = serializers.EmailField(source="user.email", read_only=True)
    role = serializers.CharField(read_only=True)


class MeSerializer(UserSerializer):
    """GET users/me: the account the key spends, and for an organization's key the
    organization and the member who made the key."""

    organization = serializers.SerializerMethodField(help_text="An organization's key: its organization; else null.")
    member = serializers.SerializerMethodField(help_text="An organization's key: the member who made it; else null.")

    class Meta(UserSerializer.Meta):
        fields = [*UserSerializer.Meta.fields, "kind", "organization", "member"]
        read_only_fields = fields

    @extend_schema_field(MeOrganizationSerializer(allow_null=True))
    def get_organization(self, user: User) -> dict | None:
        return MeOrganizationSerializer(user.organization).data if user.is_organization else None

    @extend_schema_field(MeMemberSerializer(allow_null=True))
    def get_member(self, user: User) -> dict | None:
        member = self.context.get("member")
        return None if member is None else MeMemberSerializer(member).data


class RegisterSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = StrictCharField(min_length=8, max_length=128, write_only=True)
    key_name = StrictCharField(max_length=100, required=False, default="default")

    def validate_password(self, value: str) -> str:
        validate_password(value)
        return value


def _spend_of(serializer: serializers.Serializer, api_key: ApiKey) -> WindowSpend:
    """The key's spend this window: from the view's one query for a list
    (context["spend"]), else read for this key."""
    spend = serializer.context.get("spend")
    if spend is None or api_key.pk not in spend:
        spend = api_keys_spend(api_keys=[api_key])
    return spend[api_key.pk]


class ApiKeySerializer(serializers.ModelSerializer):
    budget_credits = MoneyField(help_text="Credits the key may spend per budget_window; null: no budget.")
    spent = serializers.SerializerMethodField(
        help_text="Credits charged in the current budget window (turns settled); null when the key has no budget."
    )
    held = serializers.SerializerMethodField(
        help_text="Credits held in the current budget window (turns in flight); null when the key has no budget."
    )
    resets_at = serializers.SerializerMethodField(
        help_text="When the budget window ends and spent starts again from 0 (UTC); null for a lifetime budget."
    )

    class Meta:
        model = ApiKey
        fields = [
            "id", "name", "prefix", "created_at", "last_used_at", "revoked_at",
            "budget_credits", "budget_window", "end_user_budget_credits", "end_user_budget_window", "rpm", "tpm",
            "expires_at", "scopes", "spent", "held", "resets_at",
        ]  # fmt: skip
        read_only_fields = fields

    # A key with no budget counts nothing (billing.limits keeps no counter for it):
    # null, not a 0 that would read as "spent nothing".
    @extend_schema_field({**MONEY_SCHEMA, "nullable": True})
    def get_spent(self, api_key: ApiKey) -> str | None:
        return None if api_key.budget_credits is None else format_ledger(_spend_of(self, api_key).spent)

    @extend_schema_field({**MONEY_SCHEMA, "nullable": True})
    def get_held(self, api_key: ApiKey) -> str | None:
        return None if api_key.budget_credits is None else format_ledger(_spend_of(self, api_key).held)

    @extend_schema_field({"type": "string", "format": "date-time", "nullable": True})
    def get_resets_at(self, api_key: ApiKey) -> str | None:
        resets_at = _spend_of(self, api_key).resets_at
        return None if resets_at is None else serializers.DateTimeField().to_representation(resets_at)


class ApiKeyLimitsSerializer(serializers.Serializer):
    """A key's limits, each optional (a PATCH changes only the fields it sends; null
    clears a limit). Types and ranges here; the rules in accounts.services."""

    budget_credits = serializers.DecimalField(
        max_digits=18, decimal_places=8, min_value=Decimal("0"), allow_null=True, required=False,
        help_text="Credits the key may spend (or hold for turns in flight) per budget_window; null: no budget. "
        "Over it a turn is refused: 402 (chat API) or 429 insufficient_quota (/v1).",
    )  # fmt: skip
    budget_window = serializers.ChoiceField(
        choices=SpendWindow.choices, allow_null=True, required=False,
        help_text="day, week (from Monday) or month, UTC, reset at the window's start; null: a lifetime budget.",
    )  # fmt: skip
    end_user_budget_credits = serializers.DecimalField(
        max_digits=18, decimal_places=8, min_value=Decimal("0"), allow_null=True, required=False,
        help_text="Credits EACH end user of this key (the OpenAI `user` field, or the X-OpenWebUI-User-Id header) "
        "may spend or hold per end_user_budget_window; null: end users are not limited. Over it: 402 (chat API) "
        "or 429 insufficient_quota (/v1) for that end user only.",
    )  # fmt: skip
    end_user_budget_window = serializers.ChoiceField(
        choices=SpendWindow.choices, allow_null=True, required=False,
        help_text="day, week (from Monday) or month, UTC; null: a lifetime budget per end user.",
    )  # fmt: skip
    rpm = serializers.IntegerField(
        min_value=1, max_value=RATE_MAX, allow_null=True, required=False,
        help_text="Turns or completions accepted per minute (UTC calendar minute); over it 429 with Retry-After.",
    )  # fmt: skip
    tpm = serializers.IntegerField(
        min_value=1, max_value=RATE_MAX, allow_null=True, required=False,
        help_text="Tokens per minute, each request counted at acceptance as its prompt estimate plus the most "
        "output it may get; over it 429 with Retry-After.",
    )  # fmt: skip
    expires_at = serializers.DateTimeField(
        allow_null=True, required=False, help_text="After this time the key is refused (401); null: never."
    )
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiKeyScope.choices), min_length=1, required=False,
        help_text="chat (the /api/v1 API), openai (the /v1 endpoint), keys (making keys, changing key limits and "
        "scopes, the account cap, saving a card, auto top-up; only a caller with keys may give it); default chat "
        "and openai. Else 403 naming the scope.",
    )  # fmt: skip


class ApiKeyCreateSerializer(ApiKeyLimitsSerializer):
    name = StrictCharField(max_length=100)


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret, shown only this once.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class SpendCapSerializer(serializers.Serializer):
    """PATCH users/me/limits."""

    spend_cap_credits = serializers.DecimalField(
        max_digits=18, decimal_places=8, min_value=Decimal("0"), allow_null=True, required=False,
        help_text="Credits the whole account may spend (or hold) per spend_cap_window, over all its keys; null: "
        "no cap. Over it a turn is refused: 402 (chat API) or 429 insufficient_quota (/v1).",
    )  # fmt: skip
    spend_cap_window = serializers.ChoiceField(
        choices=SpendWindow.choices, allow_null=True, required=False,
        help_text="day, week (from Monday) or month, UTC, reset at the window's start; null: lifetime.",
    )  # fmt: skip


class AccountLimitsSerializer(serializers.Serializer):
    """GET users/me/limits: the cap and its current window (billing.limits.account_spend)."""

    spend_cap_credits = MoneyField()
    spend_cap_window = serializers.ChoiceField(choices=SpendWindow.choices, allow_null=True, read_only=True)
    spent = MoneyField(
        help_text="Credits charged in the current window (turns settled since the cap was set); null with no cap."
    )
    held = MoneyField(help_text="Credits held in the current window (turns in flight); null with no cap.")
    resets_at = serializers.DateTimeField(
        allow_null=True, read_only=True, help_text="When the window ends (UTC); null for a lifetime cap."
    )


class EndUserSerializer(serializers.ModelSerializer):
    """An end user of one of the caller's keys, with the budget that applies to them
    (their override, else the key's end-user budget) and their spend in its window
    (for life when they have no budget). The view reads every row's spend in one
    query (context["spend"])."""

    api_key_id = serializers.IntegerField(read_only=True)
    api_key_name = serializers.CharField(source="api_key.name", read_only=True)
    override = serializers.BooleanField(source="has_override", read_only=True, help_text="A budget of their own.")
    budget_credits = serializers.SerializerMethodField(help_text="The budget that applies; null: none.")
    budget_window = serializers.SerializerMethodField(help_text="Its window; null: lifetime.")
    spent = serializers.SerializerMethodField(help_text="Credits charged in the current window.")
    held = serializers.SerializerMethodField(help_text="Credits held in the current window (requests in flight).")
    resets_at = serializers.SerializerMethodField(help_text="When the window ends (UTC); null for lifetime.")

    class Meta:
        model = EndUser
        fields = [
            "id", "external_id", "api_key_id", "api_key_name", "created_at", "override", "blocked",
            "budget_credits", "budget_window", "spent", "held", "resets_at",
        ]  # fmt: skip
        read_only_fields = fields

    def _spend(self, end_user: EndUser) -> WindowSpend:
        spend = self.context.get("spend")
        if spend is None or end_user.pk not in spend:
            spend = end_users_spend(end_users=[end_user])
        return spend[end_user.pk]

    @extend_schema_field({**MONEY_SCHEMA, "nullable": True})
    def get_budget_credits(self, end_user: EndUser) -> str | None:
        budget = end_user_budget(api_key=end_user.api_key, end_user=end_user)[0]
        return None if budget is None else format_ledger(budget)

    @extend_schema_field({"type": "string", "enum": SpendWindow.values, "nullable": True})
    def get_budget_window(self, end_user: EndUser) -> str | None:
        return end_user_budget(api_key=end_user.api_key, end_user=end_user)[1]

    @extend_schema_field(MONEY_SCHEMA)
    def get_spent(self, end_user: EndUser) -> str:
        return format_ledger(self._spend(end_user).spent)

    @extend_schema_field(MONEY_SCHEMA)
    def get_held(self, end_user: EndUser) -> str:
        return format_ledger(self._spend(end_user).held)

    @extend_schema_field({"type": "string", "format": "date-time", "nullable": True})
    def get_resets_at(self, end_user: EndUser) -> str | None:
        resets_at = self._spend(end_user).resets_at
        return None if resets_at is None else serializers.DateTimeField().to_representation(resets_at)


class EndUserOverrideSerializer(serializers.Serializer):
    """PUT users/me/end-users/{id}: the end user's own budget, or a block."""

    budget_credits = serializers.DecimalField(
        max_digits=18, decimal_places=8, min_value=Decimal("0"), allow_null=True, required=False,
        help_text="Their own budget per budget_window (0 spends nothing); null: the key's end-user budget applies.",
    )  # fmt: skip
    budget_window = serializers.ChoiceField(
        choices=SpendWindow.choices, allow_null=True, required=False, help_text="day, week or month, UTC; null: lifetime."
    )
    blocked = serializers.BooleanField(required=False, help_text="Refuse every request for them (402 / 429).")


class RegisteredSerializer(serializers.Serializer):
    user = UserSerializer()
    api_key = ApiKeyCreatedSerializer()
