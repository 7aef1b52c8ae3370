import uuid
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from billing.models import GRANT_PERMISSION, CreditGrant, CreditHold, CreditTransaction, ModelPrice, Wallet
from billing.money import format_ledger
from billing.selectors import model_price_for_alias
from billing.services import (
    PRICE_FIELDS,
    model_price_change,
    model_price_create,
    model_price_deactivate,
    wallet_grant,
)
from billing.stripe import admin as stripe_admin  # noqa: F401  registers the top-up and webhook trigger admins
from core.exceptions import ApplicationError

RECENT_ROWS = 20
LEDGER_FIELDS = ["created_at", "kind", "amount", "balance_after", "reference", "reason", "actor"]


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


class RecentTransactionsInline(admin.TabularInline):
    model = CreditTransaction
    formset = RecentRowsFormSet
    fields = LEDGER_FIELDS
    readonly_fields = LEDGER_FIELDS
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

    list_display = ["user", "balance", "held", "available_credits", "updated_at"]
    list_select_related = ["user"]
    search_fields = ["user__email"]
    fields = ["user", "balance", "held", "available_credits", "grants_remaining", "created_at", "updated_at"]
    readonly_fields = fields
    inlines = [GrantsInline, RecentTransactionsInline]

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
                    request, f"Granted {row.amount} credits to {wallet.user}; balance {row.balance_after}.",
                    messages.SUCCESS,
                )  # fmt: skip
                return HttpResponseRedirect(reverse("admin:billing_wallet_change", args=[wallet.pk]))
        context = {
            **self.admin_site.each_context(request),
            **self._links(wallet),
            "title": f"Grant credits to {wallet.user}",
            "opts": self.opts,
            "wallet": wallet,
            "form": form,
        }
        return TemplateResponse(request, "admin/billing/wallet/grant.html", context)


@admin.register(CreditTransaction)
class CreditTransactionAdmin(admin.ModelAdmin):
    """The ledger, read-only: no add, change or delete (not even in bulk)."""

    list_display = ["id", "created_at", "wallet", "kind", "amount", "balance_after", "reference", "actor", "reason"]
    list_select_related = ["wallet__user", "actor"]
    list_filter = ["kind"]
    search_fields = ["reference", "wallet__user__email", "reason"]
    ordering = ["-id"]  # newest first through the primary key (created_at has no index of its own)
    fields = ["wallet", *LEDGER_FIELDS]
    readonly_fields = fields
    actions = None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: CreditTransaction | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: CreditTransaction | None = None) -> bool:
        return False


@admin.register(CreditHold)
class CreditHoldAdmin(admin.ModelAdmin):
    list_display = ["reference", "wallet", "amount", "status", "created_at", "closed_at"]
    list_select_related = ["wallet__user"]
    list_filter = ["status"]
    search_fields = ["reference", "wallet__user__email"]
    fields = ["wallet", "reference", "amount", "status", "created_at", "closed_at"]
    readonly_fields = fields
    actions = None

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

    def clean_alias(self) -> str:
        alias = self.cleaned_data["alias"].strip()
        # Shown on the form here; model_price_create refuses it too (and the database).
        if model_price_for_alias(alias=alias) is not None:
            raise forms.ValidationError("This alias already has an active price; change that one instead.")
        return alias


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Saving a changed price creates a new row and deactivates the old one
    (billing.services.model_price_change): a row's prices are never rewritten, so
    every LLM call keeps the price it was charged at. Inactive rows are history."""

    list_display = [
        "alias",
        "provider",
        "provider_model",
        "input_credits_per_mtok",
        "output_credits_per_mtok",
        "context_tokens",
        "max_output_tokens",
        "active",
        "created_at",
    ]
    list_filter = ["active", "provider"]
    search_fields = ["alias", "provider_model"]
    fields = ["alias", *PRICE_FIELDS, "active", "created_at"]
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
