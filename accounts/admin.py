import threading

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import UserChangeForm, UserCreationForm
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from accounts.models import ApiKey, ApiKeyScope, EndUser, User
from accounts.services import (
    API_KEY_LIMIT_FIELDS,
    END_USER_FIELDS,
    SPEND_CAP_FIELDS,
    api_key_revoke,
    end_user_override_set,
    limit_values_clean,
    user_create,
)
from billing.limits import WindowSpend, account_spend, api_keys_spend, end_user_budget, end_users_spend
from billing.money import format_ledger, format_price
from core.admin_display import account_name, clipped, timestamp_column
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
    # One line per row at 1280 px (tests/browser/test_organizations.py).
    list_display = ["email_text", "kind", "organization_name", "is_staff", "is_active", "joined"]
    list_filter = ["kind", "is_staff", "is_active"]
    list_select_related = ["organization"]
    search_fields = ["email", "organization__name"]

    joined = timestamp_column("date_joined", "date joined")

    @admin.display(description="email", ordering="email")
    def email_text(self, obj: User) -> str:
        return clipped(obj.email, width="30em")

    @admin.display(description="organization", ordering="organization__name")
    def organization_name(self, obj: User) -> str:
        # An organization's account: the organization it is; a person: their memberships are on their page.
        return clipped(obj.organization.name if obj.is_organization else None, width="14em")
    fieldsets = [
        (None, {"fields": ["email", "kind", "organizations", "password"]}),
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
    readonly_fields = ["kind", "organizations", "spend_this_window"]

    @admin.display(description="Organizations")
    def organizations(self, obj: User) -> str:
        """An organization's account: the organization it holds the wallet of. A person:
        the organizations they are a member of, with their role."""
        if obj.pk is None:
            return "-"
        if obj.is_organization:
            organization = obj.organization
            url = reverse("admin:organizations_organization_change", args=[organization.pk])
            return format_html('This is the account of <a href="{}">organization {}</a>', url, organization.name)
        memberships = obj.memberships.filter(removed_at__isnull=True).select_related("organization")
        links = [
            format_html(
                '<a href="{}">{}</a> ({})',
                reverse("admin:organizations_organization_change", args=[m.organization_id]), m.organization.name,
                m.role,
            )  # fmt: skip
            for m in memberships
        ]
        return format_html_join(", ", "{}", ((link,) for link in links)) if links else "None"

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


class KeyOwnerFilter(admin.SimpleListFilter):
    title = "owner"
    parameter_name = "owner"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("person", "Personal"), ("organization", "Organization's")]

    def queryset(self, request: HttpRequest, queryset):  # noqa: ANN001, ANN201
        if self.value() == "person":
            return queryset.filter(membership__isnull=True)
        if self.value() == "organization":
            return queryset.filter(membership__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyAdminForm
    # One line per row at 1280 px (tests/browser/test_console_lists.py).
    list_display = ["key_name", "prefix", "user_email", "created", "last_used", "expires", "budget", "revoked"]
    list_filter = ["revoked_at", KeyOwnerFilter]
    search_fields = ["name", "prefix", "user__email", "user__organization__name", "membership__user__email"]
    list_select_related = ["user__organization", "membership__user"]
    allowed_lookups = ("membership__id__exact",)
    # revoked_at is read-only: a revoked key stays revoked (a leaked key cannot be
    # revived by clearing the date); keys are revoked with the list's action.
    readonly_fields = [
        "user", "organization_member", "prefix", "created_at", "last_used_at", "revoked_at", "spend_this_window",
        "end_users_link",
    ]  # fmt: skip
    fieldsets = [
        (
            None,
            {"fields": ["user", "organization_member", "name", "prefix", "created_at", "last_used_at", "revoked_at"]},
        ),
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
        (
            "End users",
            {
                "fields": ["end_user_budget_credits", "end_user_budget_window", "end_users_link"],
                "description": "The people a front end's requests name (the OpenAI user field, or the "
                "X-OpenWebUI-User-Id header). The budget applies to each of them separately; one end user's "
                "own budget or block is set on their page.",
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
        # An organization's key: the organization and the member who made it, in one cell.
        if obj.membership_id is not None:
            return clipped(f"{obj.user.organization.name}: {obj.membership.user.email}", width="11em")
        return clipped(obj.user.email, width="11em")

    @admin.display(description="Organization")
    def organization_member(self, obj: ApiKey) -> str:
        if obj.pk is None or obj.membership_id is None:
            return "None: a personal key"
        member = obj.membership
        return format_html(
            '<a href="{}">{}</a>, made by member <a href="{}">{}</a> ({}{})',
            reverse("admin:organizations_organization_change", args=[member.organization_id]),
            member.organization.name,
            reverse("admin:organizations_membership_change", args=[member.pk]),
            member.user.email, member.role, ", removed" if member.removed_at else "",
        )  # fmt: skip

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup in self.allowed_lookups or super().lookup_allowed(lookup, value, request)

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

    @admin.display(description="End users")
    def end_users_link(self, obj: ApiKey) -> str:
        if obj.pk is None:
            return "-"
        count = obj.end_users.count()
        url = reverse("admin:accounts_enduser_changelist") + f"?api_key__id__exact={obj.pk}"
        return format_html('<a href="{}">{} end user{}</a>', url, count, "" if count == 1 else "s")

    @admin.action(description="Revoke the selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset) -> None:  # noqa: ANN001
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=api_key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key{'s' if revoked != 1 else ''}.", messages.SUCCESS)

    def has_add_permission(self, request) -> bool:  # noqa: ANN001
        return False  # keys are issued by the API or `manage.py issue_api_key`, which show the secret once


class EndUserAdminForm(forms.ModelForm):
    class Meta:
        model = EndUser
        fields = list(END_USER_FIELDS)

    def clean(self) -> dict:
        """The service's rules (accounts.services.end_user_override_set), as field errors."""
        cleaned = super().clean()
        if cleaned.get("budget_window") and cleaned.get("budget_credits") is None:
            self.add_error("budget_window", "A window needs a budget of their own (else the key's applies).")
        return cleaned


@admin.register(EndUser)
class EndUserAdmin(admin.ModelAdmin):
    """A key's end users: who spent what in their window, and the owner's override or
    block (set here through accounts.services, as the API sets them)."""

    form = EndUserAdminForm
    _page = threading.local()  # the list page's spend, read while it renders on this thread
    list_display = ["external", "key_link", "owner", "first_seen", "budget", "spent", "state"]
    list_filter = ["blocked"]
    search_fields = ["external_id", "api_key__name", "api_key__prefix", "api_key__user__email"]
    list_select_related = ["api_key__user__organization"]
    allowed_lookups = ("api_key__id__exact",)
    readonly_fields = ["external_id", "api_key", "created_at", "spend_this_window", "turns_link"]
    fieldsets = [
        (None, {"fields": ["external_id", "api_key", "created_at", "spend_this_window", "turns_link"]}),
        (
            "Override",
            {
                "fields": list(END_USER_FIELDS),
                "description": "Empty budget: the key's end-user budget applies. Blocked: every request for this "
                "person is refused (402 on the chat API, 429 on /v1).",
            },
        ),
    ]

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup in self.allowed_lookups or super().lookup_allowed(lookup, value, request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made by the requests that name them

    def has_delete_permission(self, request: HttpRequest, obj: EndUser | None = None) -> bool:
        return False  # their holds and turns point at them: block one instead

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):  # noqa: ANN201
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:  # every row's spend in one query, for this thread's rendering
            self._page.spend = end_users_spend(end_users=list(changelist.result_list))
        return response

    @admin.display(description="end user", ordering="external_id")
    def external(self, obj: EndUser) -> str:
        return clipped(obj.external_id, width="20em")

    @admin.display(description="API key", ordering="api_key__name")
    def key_link(self, obj: EndUser) -> str:
        url = reverse("admin:accounts_apikey_change", args=[obj.api_key_id])
        return format_html('<a href="{}">{}</a>', url, clipped(obj.api_key.name, width="10em"))

    @admin.display(description="owner", ordering="api_key__user__email")
    def owner(self, obj: EndUser) -> str:
        return clipped(account_name(obj.api_key.user), width="11em")

    first_seen = timestamp_column("created_at", "first seen")

    @admin.display(description="budget")
    def budget(self, obj: EndUser) -> str:
        budget, window = end_user_budget(api_key=obj.api_key, end_user=obj)
        if budget is None:
            return "-"
        mine = " (own)" if obj.has_override else ""
        return f"{format_price(budget)} / {window or 'lifetime'}{mine}"

    @admin.display(description="spent this window")
    def spent(self, obj: EndUser) -> str:
        spend = getattr(self._page, "spend", {}).get(obj.pk) or end_users_spend(end_users=[obj])[obj.pk]
        return format_ledger(spend.spent)

    @admin.display(description="state", ordering="blocked")
    def state(self, obj: EndUser) -> str:
        # A word, not Django's red cross for "not blocked", which reads as a failure.
        return "blocked" if obj.blocked else "ok"

    @admin.display(description="Spent this window")
    def spend_this_window(self, obj: EndUser) -> str:
        return _spend_text(end_users_spend(end_users=[obj])[obj.pk])

    @admin.display(description="Turns")
    def turns_link(self, obj: EndUser) -> str:
        url = reverse("admin:chat_turn_changelist") + f"?end_user__id__exact={obj.pk}"
        return format_html('<a href="{}">Their turns</a>', url)

    def save_model(self, request: HttpRequest, obj: EndUser, form: forms.ModelForm, change: bool) -> None:
        changes = {name: form.cleaned_data[name] for name in form.changed_data if name in END_USER_FIELDS}
        end_user_override_set(end_user=EndUser.objects.get(pk=obj.pk), **changes)
