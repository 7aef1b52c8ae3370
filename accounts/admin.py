from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import UserChangeForm, UserCreationForm

from accounts.models import ApiKey, ApiKeyScope, User
from accounts.services import (
    API_KEY_LIMIT_FIELDS,
    SPEND_CAP_FIELDS,
    api_key_revoke,
    limit_values_clean,
    user_create,
)
from billing.limits import WindowSpend, account_spend, api_keys_spend
from billing.money import format_ledger, format_price
from core.admin_display import clipped, timestamp_column
from core.exceptions import ApplicationError


def _clean_limits(form: forms.ModelForm, fields: tuple[str, ...]) -> None:
    """The limit fields the admin changed, checked by the same rules as the API
    (accounts.services.limit_values_clean); a refusal is an error on its field."""
    changed = {name: form.cleaned_data.get(name) for name in fields if name in form.changed_data}
    try:
        form.cleaned_data.update(limit_values_clean(changed, allowed=fields))
    except ApplicationError as exc:
        for name, errors in (exc.fields or {"__all__": [exc.message]}).items():
            form.add_error(name if name in form.fields else None, errors)


def _spend_text(spend: WindowSpend) -> str:
    resets = f"resets at {spend.resets_at:%Y-%m-%d %H:%M} UTC" if spend.resets_at else "lifetime, never resets"
    return f"{format_ledger(spend.spent)} spent, {format_ledger(spend.held)} held ({resets})"


class EmailUserCreationForm(UserCreationForm):
    class Meta:
        model = User
        fields = ["email"]


class EmailUserChangeForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"

    def clean(self) -> dict:
        cleaned = super().clean()
        _clean_limits(self, SPEND_CAP_FIELDS)
        return cleaned


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    form = EmailUserChangeForm
    add_form = EmailUserCreationForm
    ordering = ["email"]
    list_display = ["email", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_active"]
    search_fields = ["email"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Permissions", {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]}),
        (
            "Spending cap",
            {
                "fields": ["spend_cap_credits", "spend_cap_window", "spend_this_window"],
                "description": "At most this many credits spent or held per window (UTC; weeks start on Monday; "
                "empty window: lifetime) over all the account's API keys. Empty cap: no cap.",
            },
        ),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    readonly_fields = ["spend_this_window"]

    @admin.display(description="Spent this window")
    def spend_this_window(self, obj: User) -> str:
        if obj.pk is None or obj.spend_cap_credits is None:
            return "No cap"
        return _spend_text(account_spend(user=obj))
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]

    def save_model(self, request, obj, form, change):  # noqa: ANN001, ANN201
        if change:
            return super().save_model(request, obj, form, change)
        # New users go through the service so they get their wallet.
        created = user_create(email=obj.email)
        created.password = obj.password
        created.save(update_fields=["password"])
        obj.pk = created.pk
        obj.refresh_from_db()


class ApiKeyAdminForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiKeyScope.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="What the key may call; a request elsewhere is refused (403).",
    )

    class Meta:
        model = ApiKey
        fields = ["name", *API_KEY_LIMIT_FIELDS]

    def clean(self) -> dict:
        cleaned = super().clean()
        _clean_limits(self, API_KEY_LIMIT_FIELDS)
        return cleaned


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyAdminForm
    # One line per row at 1280 px (tests/browser/test_console_lists.py).
    list_display = ["key_name", "prefix", "user_email", "created", "last_used", "expires", "budget", "revoked"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "user__email"]
    list_select_related = ["user"]
    # revoked_at is read-only: a revoked key stays revoked (a leaked key cannot be
    # revived by clearing the date); keys are revoked with the list's action.
    readonly_fields = ["user", "prefix", "created_at", "last_used_at", "revoked_at", "spend_this_window"]
    fieldsets = [
        (None, {"fields": ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]}),
        (
            "Limits",
            {
                "fields": [
                    "budget_credits", "budget_window", "spend_this_window", "rpm", "tpm", "expires_at", "scopes",
                ],  # fmt: skip
                "description": "All optional. Budget: credits spent or held per window (UTC; weeks start on "
                "Monday; empty window: lifetime). rpm/tpm: requests and estimated tokens per minute.",
            },
        ),
    ]
    actions = ["revoke_keys"]

    # Days are enough to tell when a key was made, expires or was revoked; last use to the minute.
    created = timestamp_column("created_at", "created at", day=True)
    last_used = timestamp_column("last_used_at", "last used")
    expires = timestamp_column("expires_at", "expires at", day=True)
    revoked = timestamp_column("revoked_at", "revoked at", day=True)

    @admin.display(description="name", ordering="name")
    def key_name(self, obj: ApiKey) -> str:
        return clipped(obj.name, width="13em")

    @admin.display(description="user", ordering="user__email")
    def user_email(self, obj: ApiKey) -> str:
        return clipped(obj.user.email, width="11em")

    @admin.display(description="Budget")
    def budget(self, obj: ApiKey) -> str:
        if obj.budget_credits is None:
            return "-"
        # As written (1000, not 1000.00000000): the list keeps one line per key.
        return f"{format_price(obj.budget_credits)} / {obj.budget_window or 'lifetime'}"

    @admin.display(description="Spent this window")
    def spend_this_window(self, obj: ApiKey) -> str:
        if obj.pk is None:
            return "-"
        return _spend_text(api_keys_spend(api_keys=[obj])[obj.pk])

    @admin.action(description="Revoke the selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset) -> None:  # noqa: ANN001
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=api_key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key{'s' if revoked != 1 else ''}.", messages.SUCCESS)

    def has_add_permission(self, request) -> bool:  # noqa: ANN001
        return False  # keys are issued by the API or `manage.py issue_api_key`, which show the secret once
