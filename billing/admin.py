import uuid
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from billing.models import GRANT_PERMISSION, CreditGrant, CreditHold, CreditTransaction, ModelPrice, Wallet
from billing.money import format_ledger
from billing.selectors import model_price_for_alias
from billing.services import (
    PRICE_FIELDS,
    TIER_FIELDS,
    model_price_change,
    model_price_create,
    model_price_deactivate,
    model_price_values_clean,
    wallet_grant,
)
from billing.stripe import admin as stripe_admin  # noqa: F401  registers the top-up and webhook trigger admins
from core.admin_display import account_name, clipped, timestamp_column
from core.exceptions import ApplicationError

RECENT_ROWS = 20
LEDGER_FIELDS = ["created_at", "kind", "amount", "balance_after", "reference", "reason", "actor"]


def wallet_name(wallet: Wallet) -> str:
    """The wallet's name on its pages: "Wallet of alice@example.com", or "Wallet of Organization Acme"."""
    return f"Wallet of {account_name(wallet.user)}"


class GrantForm(forms.Form):
    amount = forms.DecimalField(max_digits=18, decimal_places=8, help_text="Credits to add (more than 0).")
    reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))
    promotional = forms.BooleanField(required=False, help_text="Promotional credits are used before any others.")
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires at",
        help_text="Optional, UTC, e.g. 2027-01-31 00:00. What is left then expires (an `expiry` ledger row). "
        "Empty: never.",
    )
    # One token per rendered form: submitting the same form twice grants once.
    token = forms.UUIDField(widget=forms.HiddenInput)

    def clean_amount(self) -> Decimal:
        # The service refuses it too; saying so on the form spares a round trip.
        amount = self.cleaned_data["amount"]
        if amount <= 0:
            raise forms.ValidationError("Must be more than 0.")
        return amount


class GrantsInline(admin.TabularInline):
    """The wallet's promotional and expiring grants (lots), newest first."""

    model = CreditGrant
    fields = ["created_at", "amount", "remaining", "promotional", "expires_at", "expired_at", "transaction"]
    readonly_fields = fields
    ordering = ["-created_at", "-id"]
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = "Promotional and expiring grants (used first: promotional, then the earliest expiring)"

    def has_view_permission(self, request: HttpRequest, obj: Wallet | None = None) -> bool:
        # Part of the wallet: whoever may view the wallet sees its grants.
        return request.user.has_perm("billing.view_wallet")

    def has_add_permission(self, request: HttpRequest, obj: Wallet | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Wallet | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Wallet | None = None) -> bool:
        return False


class RecentRowsFormSet(BaseInlineFormSet):
    """Only the most recent ledger rows (a wallet can have thousands); the full
    ledger is one click away on the transactions list."""

    def get_queryset(self):  # noqa: ANN201
        if not hasattr(self, "_recent"):
            self._recent = list(super().get_queryset().select_related("actor")[:RECENT_ROWS])
        return self._recent


class LedgerCells:
    """Ledger rows' cells in one line each (the ledger list, a wallet's recent rows):
    long text cut to its column, the whole in its tooltip (core.admin_display)."""

    created = timestamp_column("created_at", "created at")

    @admin.display(description="user", ordering="wallet__user__email")
    def user_email(self, obj: CreditTransaction) -> str:
        return clipped(account_name(obj.wallet.user), width="12em")

    @admin.display(description="reference", ordering="reference")
    def reference_text(self, obj: CreditTransaction) -> str:
        return clipped(obj.reference, width="10em")

    @admin.display(description="actor", ordering="actor__email")
    def actor_email(self, obj: CreditTransaction) -> str:
        return clipped(obj.actor.email if obj.actor else None, width="9em")

    @admin.display(description="reason")
    def reason_text(self, obj: CreditTransaction) -> str:
        return clipped(obj.reason, width="10em")


class RecentTransactionsInline(LedgerCells, admin.TabularInline):
    model = CreditTransaction
    formset = RecentRowsFormSet
    fields = ["created", "kind", "amount", "balance_after", "reference_text", "reason_text", "actor_email"]
    readonly_fields = fields
    ordering = ["-created_at", "-id"]
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = f"Recent transactions (latest {RECENT_ROWS})"

    def has_add_permission(self, request: HttpRequest, obj: Wallet | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Wallet | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Wallet | None = None) -> bool:
        return False


@admin.register(Wallet)
class WalletAdmin(admin.ModelAdmin):
    """Read-only: balances move only through billing.services (here: the grant form)."""

    list_display = ["owner", "balance", "held", "available_credits", "updated_at"]
    list_select_related = ["user__organization"]
    list_filter = [("user__kind", admin.ChoicesFieldListFilter)]
    search_fields = ["user__email", "user__organization__name", "user__organization__slug"]
    # The figures side by side, so the grant form below them is in view as the page opens.
    fields = ["owner_link", ("balance", "held", "available_credits", "grants_remaining"), ("created_at", "updated_at")]
    readonly_fields = [
        "owner_link", "balance", "held", "available_credits", "grants_remaining", "created_at", "updated_at",
    ]  # fmt: skip
    inlines = [GrantsInline, RecentTransactionsInline]

    def get_queryset(self, request: HttpRequest):  # noqa: ANN201
        return super().get_queryset(request).select_related("user__organization")

    # An organization's wallet is named "Organization Acme", never by its account's
    # .invalid email (core.admin_display.account_name).
    @admin.display(description="owner", ordering="user__email")
    def owner(self, obj: Wallet) -> str:
        return account_name(obj.user)

    @admin.display(description="owner")
    def owner_link(self, obj: Wallet) -> str:
        user_url = reverse("admin:accounts_user_change", args=[obj.user_id])
        if obj.user.is_organization:
            org_url = reverse("admin:organizations_organization_change", args=[obj.user.organization.pk])
            return format_html(
                '<a href="{}">{}</a> (account <a href="{}">{}</a>)',
                org_url, account_name(obj.user), user_url, obj.user.email,
            )  # fmt: skip
        return format_html('<a href="{}">{}</a>', user_url, obj.user.email)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        wallet = self.get_object(request, object_id)
        if wallet is not None:
            name = wallet_name(wallet)
            extra_context = {"subtitle": name, "wallet_name": name, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="available")
    def available_credits(self, obj: Wallet) -> str:
        return format_ledger(obj.available)  # "0.00000000", never Decimal's "0E-8"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a wallet is created with its user

    def has_change_permission(self, request: HttpRequest, obj: Wallet | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Wallet | None = None) -> bool:
        return False

    def has_grant_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_staff and request.user.has_perm(GRANT_PERMISSION)

    def get_urls(self) -> list:
        grant = path(
            "<path:object_id>/grant/",
            self.admin_site.admin_view(self.grant_view),
            name="billing_wallet_grant",
        )
        return [grant, *super().get_urls()]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict,
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Wallet | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self._links(obj))
            if self.has_grant_permission(request):
                context["grant_form"] = GrantForm(initial={"token": uuid.uuid4()})
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _links(self, wallet: Wallet) -> dict:
        return {
            "grant_url": reverse("admin:billing_wallet_grant", args=[wallet.pk]),
            "usage_url": f"{reverse('admin:index')}reporting/usage/?user_id={wallet.user_id}",
            "ledger_url": f"{reverse('admin:billing_credittransaction_changelist')}?wallet__id__exact={wallet.pk}",
        }

    def grant_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        wallet = self.get_object(request, object_id)
        if wallet is None or not self.has_view_permission(request, wallet):
            raise Http404("No such wallet.")
        if not self.has_grant_permission(request):
            raise PermissionDenied
        form = GrantForm(request.POST or None, initial={"token": uuid.uuid4()})
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                row = wallet_grant(
                    user=wallet.user,
                    amount=data["amount"],
                    reason=data["reason"],
                    actor=request.user,
                    reference=f"admin:{data['token']}",
                    promotional=data["promotional"],
                    expires_at=data["expires_at"],
                )
            except ApplicationError as exc:
                for field, errors in (exc.fields or {None: [exc.message]}).items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                self.message_user(
                    request, f"Granted {row.amount} credits to {account_name(wallet.user)}; balance {row.balance_after}.",
                    messages.SUCCESS,
                )  # fmt: skip
                return HttpResponseRedirect(reverse("admin:billing_wallet_change", args=[wallet.pk]))
        context = {
            **self.admin_site.each_context(request),
            **self._links(wallet),
            "title": f"Grant credits to {account_name(wallet.user)}",
            "opts": self.opts,
            "wallet": wallet,
            "wallet_name": wallet_name(wallet),
            "form": form,
        }
        return TemplateResponse(request, "admin/billing/wallet/grant.html", context)


@admin.register(CreditTransaction)
class CreditTransactionAdmin(LedgerCells, admin.ModelAdmin):
    """The ledger, read-only: no add, change or delete (not even in bulk)."""

    # One line per row at 1280 px (tests/browser/test_console_lists.py): the wallet as its
    # owner's email, long text cut to its column with the whole in a tooltip. The row's
    # date links to it (its id is in the page's address), and sorts along the id.
    list_display = [
        "created", "user_email", "kind", "amount", "balance_after", "reference_text", "actor_email", "reason_text",
    ]  # fmt: skip
    list_select_related = ["wallet__user__organization", "actor"]
    list_filter = ["kind"]
    search_fields = ["reference", "wallet__user__email", "wallet__user__organization__name", "reason"]
    ordering = ["-id"]  # newest first through the primary key (created_at has no index of its own)
    fields = ["wallet", *LEDGER_FIELDS]
    readonly_fields = fields
    actions = None

    created = timestamp_column("created_at", "created at", ordering="id")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: CreditTransaction | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: CreditTransaction | None = None) -> bool:
        return False


@admin.register(CreditHold)
class CreditHoldAdmin(admin.ModelAdmin):
    list_display = ["reference", "wallet_owner", "amount", "status", "created_at", "closed_at"]
    list_select_related = ["wallet__user__organization"]
    list_filter = ["status"]
    search_fields = ["reference", "wallet__user__email"]
    fields = ["wallet", "reference", "amount", "status", "created_at", "closed_at"]
    readonly_fields = fields
    actions = None

    @admin.display(description="wallet", ordering="wallet__user__email")
    def wallet_owner(self, obj: CreditHold) -> str:
        return account_name(obj.wallet.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: CreditHold | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: CreditHold | None = None) -> bool:
        return False


class ModelPriceForm(forms.ModelForm):
    class Meta:
        model = ModelPrice
        fields = ["alias", *PRICE_FIELDS, "active"]
        # Short labels: each fieldset's description says what the numbers are.
        labels = {
            "input_credits_per_mtok": "Input",
            "output_credits_per_mtok": "Output",
            "cached_input_credits_per_mtok": "Cached input",
            "cache_write_credits_per_mtok": "Cache writes",
            "tier_threshold_tokens": "Above (input tokens)",
            "tier_input_credits_per_mtok": "Tier input",
            "tier_output_credits_per_mtok": "Tier output",
        }

    # What billing.services refused when the admin saved this data: {field: [messages]}
    # (None: the form as a whole). ModelPriceAdmin sets it on the form it shows again.
    refused: dict[str | None, list[str]] = {}

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        if "kind" in self.fields:
            self.fields["kind"].required = False  # left out: chat, as in the models file

    def clean_kind(self) -> str:
        return self.cleaned_data.get("kind") or ModelPrice.Kind.CHAT

    def clean_alias(self) -> str:
        alias = self.cleaned_data["alias"].strip()
        # Shown on the form here; model_price_create refuses it too (and the database).
        if model_price_for_alias(alias=alias) is not None:
            raise forms.ValidationError("This alias already has an active price; change that one instead.")
        return alias

    def clean(self) -> dict:
        cleaned = super().clean()
        refused = self.refused
        values = {name: cleaned[name] for name in PRICE_FIELDS if name in cleaned}
        if not refused and len(values) == len(PRICE_FIELDS):
            # The services' own rules (a whole tier, prices not negative), checked now so
            # the refusal names its field: a field with an error is left out of the model's
            # constraint checks that follow, which could only say "constraint violated".
            try:
                model_price_values_clean(values)
            except ApplicationError as exc:
                refused = exc.fields or {None: [exc.message]}
        for name, errors in refused.items():
            self.add_error(name if name in self.fields else None, errors)
        return cleaned


# The request attribute carrying the service's refusal to the form shown again.
REFUSED = "_model_price_refused"


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Saving a changed price creates a new row and deactivates the old one
    (billing.services.model_price_change): a row's prices are never rewritten, so
    every LLM call keeps the price it was charged at. Inactive rows are history.

    The form checks the values by the services' rules (billing.services.model_price_values_clean:
    a tier whole or absent, prices not negative, a known counting rule), and what the
    service still refuses when it writes (an alias priced meanwhile) is shown on its
    field too (changeform_view), as the form's own errors are."""

    list_display = [
        "alias",
        "kind",
        "provider",
        "provider_model",
        "input_credits_per_mtok",
        "output_credits_per_mtok",
        "context_tokens",
        "max_output_tokens",
        "active",
        "created_at",
    ]
    list_filter = ["active", "kind", "provider"]
    search_fields = ["alias", "provider_model"]
    fieldsets = [
        (None, {"fields": ["alias", "kind", "provider", "provider_model", "active", "created_at"]}),
        (
            "Prices",
            {
                "fields": ["input_credits_per_mtok", "output_credits_per_mtok"],
                "description": "Credits per million tokens. Reasoning (thinking) tokens are output.",
            },
        ),
        (
            "Token classes",
            {
                "fields": ["cached_input_credits_per_mtok", "cache_write_credits_per_mtok"],
                "description": "Credits per million input tokens the provider read from its cache, or wrote "
                "to it. Empty: the input price.",
            },
        ),
        (
            "Long-context tier",
            {
                "fields": list(TIER_FIELDS),
                "description": "Credits per million tokens for a call whose input passes the threshold: the "
                "whole call is priced at them, cache reads and writes raised in proportion to input. All "
                "three fields, or none.",
            },
        ),
        ("Limits & counting", {"fields": ["context_tokens", "max_output_tokens", "counting"]}),
    ]
    form = ModelPriceForm
    actions = None

    def get_readonly_fields(self, request: HttpRequest, obj: ModelPrice | None = None) -> list[str]:
        if obj is None:
            return ["active", "created_at"]  # a new price is active
        return ["alias", "created_at"]

    def has_change_permission(self, request: HttpRequest, obj: ModelPrice | None = None) -> bool:
        return super().has_change_permission(request, obj) and (obj is None or obj.active)

    def has_delete_permission(self, request: HttpRequest, obj: ModelPrice | None = None) -> bool:
        return False  # LLM calls point at the price they were charged at

    def get_form(
        self, request: HttpRequest, obj: ModelPrice | None = None, change: bool = False, **kwargs: object
    ) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, change, **kwargs)
        refused = getattr(request, REFUSED, None)
        return type(form.__name__, (form,), {"refused": refused}) if refused else form

    def changeform_view(
        self, request: HttpRequest, object_id: str | None = None, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ApplicationError as exc:
            if request.method != "POST" or getattr(request, REFUSED, None):
                raise
            refused = exc.fields or {None: [exc.message]}
        # save_model's service refused the values: the admin's transaction was rolled
        # back with the exception, and the same POST is shown again with the refusal on
        # its field (ModelPriceForm.clean), so nothing is saved.
        setattr(request, REFUSED, refused)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: forms.ModelForm, change: bool) -> None:
        values = {name: form.cleaned_data[name] for name in PRICE_FIELDS}
        if not change:
            saved = model_price_create(alias=obj.alias, **values)
        elif "active" in form.changed_data and not form.cleaned_data["active"]:
            saved = model_price_deactivate(price=ModelPrice.objects.get(pk=obj.pk))
        else:
            saved = model_price_change(price=ModelPrice.objects.get(pk=obj.pk), **values)
        # The admin goes on (message, log entry, redirect) with the row actually saved.
        for field in ModelPrice._meta.concrete_fields:
            setattr(obj, field.attname, getattr(saved, field.attname))
