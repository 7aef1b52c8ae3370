"""The console's organization pages: the list (members, balance), an organization's
page (its members, open invitations, keys and wallet, with the grant form one click
away), and the members and invitations lists.

Nothing here writes a rule of its own: members are removed, their roles and budgets
changed, invitations withdrawn and organizations made through organizations.services,
with staff acting as an owner would (services.staff_actor); money moves only through
the wallet's grant form (billing.admin). A membership is never deleted, so there is
no delete here: "Remove member" ends it and revokes the keys the member made."""

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, F, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import slugify

from accounts.models import User
from billing.limits import WindowSpend, members_spend
from billing.models import GRANT_PERMISSION
from billing.money import format_ledger, format_price
from core.admin_display import EMPTY, clipped, timestamp, timestamp_column
from core.exceptions import ApplicationError
from organizations.models import Invitation, Membership, Organization, Role
from organizations.selectors import organization_keys
from organizations.services import (
    SLUG_MAX,
    invitation_revoke,
    member_budget_set,
    member_remove,
    member_role_set,
    organization_create,
    organization_rename,
    staff_actor,
)


def _user_link(user: User, *, width: str = "16em") -> str:
    url = reverse("admin:accounts_user_change", args=[user.pk])
    return format_html('<a href="{}">{}</a>', url, clipped(user.email, width=width))


def _budget(credits, window: str | None) -> str:  # noqa: ANN001
    if credits is None:
        return EMPTY
    # As written (1000, not 1000.00000000): one line per row.
    return f"{format_price(credits)} / {window or 'lifetime'}"


def _spent(spend: WindowSpend | None) -> str:
    if spend is None:
        return EMPTY
    held = f" (+{format_ledger(spend.held)} held)" if spend.held else ""
    return f"{format_ledger(spend.spent)}{held}"


def _error_text(exc: ApplicationError) -> str:
    return " ".join(str(message) for errors in (exc.fields or {}).values() for message in errors) or exc.message


# --- the organization's page: members and open invitations -------------------------


class MembersFormSet(BaseInlineFormSet):
    """The members, current first, each with what they spent in their budget window
    (billing.limits.members_spend: one query for them all)."""

    def get_queryset(self):  # noqa: ANN201
        if not hasattr(self, "_members"):
            # With the organization: each row's (hidden) title names it.
            self._members = list(super().get_queryset().select_related("user", "organization"))
            spend = members_spend(memberships=self._members)
            for member in self._members:
                member.window_spend = spend[member.pk]
        return self._members


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    max_num = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Organization | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Organization | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Organization | None = None) -> bool:
        return False


class MembersInline(ReadOnlyInline):
    model = Membership
    formset = MembersFormSet
    fields = ["person", "role_link", "budget", "spent", "joined", "removed"]
    readonly_fields = fields
    # Current members first (a removed one's removed_at is set), each group by joining order.
    ordering = [F("removed_at").asc(nulls_first=True), "id"]
    verbose_name_plural = "Members"

    @admin.display(description="person")
    def person(self, obj: Membership) -> str:
        return _user_link(obj.user, width="22em")

    @admin.display(description="role")
    def role_link(self, obj: Membership) -> str:
        # The membership's page, where staff change the role and budget.
        url = reverse("admin:organizations_membership_change", args=[obj.pk])
        return format_html('<a href="{}" title="Change role or budget">{}</a>', url, obj.get_role_display())

    @admin.display(description="budget")
    def budget(self, obj: Membership) -> str:
        return _budget(obj.budget_credits, obj.budget_window)

    @admin.display(description="spent this window")
    def spent(self, obj: Membership) -> str:
        return _spent(getattr(obj, "window_spend", None))

    joined = timestamp_column("created_at", "joined", day=True)
    removed = timestamp_column("removed_at", "removed", day=True)


class OpenInvitationsInline(ReadOnlyInline):
    """Invitations not yet accepted nor withdrawn (withdrawn from the invitations list)."""

    model = Invitation
    fields = ["email_text", "role", "invited_by_email", "sent", "expires"]
    readonly_fields = fields
    ordering = ["-created_at", "-id"]
    verbose_name_plural = "Open invitations"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Invitation]:
        return (
            super()
            .get_queryset(request)
            .filter(accepted_at__isnull=True, revoked_at__isnull=True)
            .select_related("invited_by", "organization")
        )

    @admin.display(description="email")
    def email_text(self, obj: Invitation) -> str:
        return clipped(obj.email, width="22em")

    @admin.display(description="invited by")
    def invited_by_email(self, obj: Invitation) -> str:
        return clipped(obj.invited_by.email, width="16em")

    sent = timestamp_column("created_at", "sent")

    @admin.display(description="expires")
    def expires(self, obj: Invitation) -> str:
        if obj.expires_at <= timezone.now():
            return format_html("{} (expired)", timestamp(obj.expires_at))
        return timestamp(obj.expires_at)


# --- organizations -----------------------------------------------------------------


class OrganizationAddForm(forms.ModelForm):
    """A new organization and its first owner, made by organizations.services.organization_create."""

    owner_email = forms.EmailField(
        label="First owner", help_text="The email of the person (an existing account) who becomes its owner."
    )

    class Meta:
        model = Organization
        fields = ["name", "slug"]
        help_texts = {"slug": "Names it in URLs and reports. Empty: made from the name."}

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.fields["slug"].required = False

    def clean_owner_email(self) -> User:
        email = self.cleaned_data["owner_email"]
        person = User.objects.filter(email__iexact=email.strip()).first()
        if person is None:
            raise forms.ValidationError(f"No account has the email {email}; the owner must have one first.")
        if person.is_organization:
            raise forms.ValidationError("An organization's own account cannot be a member; name a person.")
        return person

    def clean(self) -> dict:
        # The service's slug rule (slugify the slug, or the name), so a taken one is
        # refused on its field here rather than by the service after the form.
        cleaned = super().clean()
        slug = slugify(cleaned.get("slug") or cleaned.get("name") or "")[:SLUG_MAX].strip("-")
        if cleaned.get("name") and not slug:
            self.add_error("slug", "A slug needs letters or digits.")
        elif slug and Organization.objects.filter(slug=slug).exists():
            self.add_error("slug", f"The slug {slug!r} is taken; choose another.")
        return cleaned


class OrganizationChangeForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["name"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    # One line per row at 1280 px (tests/browser/test_organizations.py).
    list_display = ["name_text", "slug_text", "members", "balance", "available", "created"]
    search_fields = ["name", "slug", "memberships__user__email"]
    list_select_related = ["account__wallet"]
    inlines = [MembersInline, OpenInvitationsInline]
    readonly_fields = [
        "slug", "account_link", "created_at", "balance", "held", "available", "grants_remaining", "wallet_links",
    ]  # fmt: skip
    fieldsets = [
        (None, {"fields": ["name", "slug", "account_link", "created_at"]}),
        (
            "Wallet",
            {
                "fields": [("balance", "held", "available", "grants_remaining"), "wallet_links"],
                "description": "The organization's account holds the wallet, its ledger and its keys, as a "
                "person's account does. \"Grant credits\" above opens the wallet's grant form.",
            },
        ),
    ]
    add_fieldsets = [(None, {"fields": ["name", "slug", "owner_email"]})]

    created = timestamp_column("created_at", "created", day=True)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        # A subquery, not Count() over a join: a search by member email joins the
        # memberships again, which would multiply a joined count.
        current = (
            Membership.objects.filter(organization=OuterRef("pk"), removed_at__isnull=True)
            .order_by()
            .values("organization")
            .annotate(count=Count("pk"))
            .values("count")
        )
        return (
            super()
            .get_queryset(request)
            .select_related("account__wallet")
            .annotate(members_count=Coalesce(Subquery(current, output_field=IntegerField()), Value(0)))
        )

    def get_form(self, request: HttpRequest, obj: Organization | None = None, change: bool = False, **kwargs):  # noqa: ANN003, ANN201
        kwargs["form"] = OrganizationChangeForm if obj is not None else OrganizationAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Organization | None = None) -> list:
        return self.fieldsets if obj is not None else self.add_fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Organization | None = None) -> list[str]:
        return self.readonly_fields if obj is not None else []

    def get_inlines(self, request: HttpRequest, obj: Organization | None) -> list:
        return self.inlines if obj is not None else []

    def has_delete_permission(self, request: HttpRequest, obj: Organization | None = None) -> bool:
        return False  # its account's ledger and its members' history point at it

    def save_model(self, request: HttpRequest, obj: Organization, form: forms.ModelForm, change: bool) -> None:
        if change:
            if "name" in form.changed_data:
                organization_rename(organization=obj, name=form.cleaned_data["name"])
            return
        created = organization_create(
            creator=form.cleaned_data["owner_email"], name=form.cleaned_data["name"], slug=form.cleaned_data["slug"]
        )
        # The admin goes on (message, log entry, redirect) with the row the service made.
        obj.pk = created.pk
        obj.refresh_from_db()

    # -- the list ---------------------------------------------------------------------

    @admin.display(description="name", ordering="name")
    def name_text(self, obj: Organization) -> str:
        return clipped(obj.name, width="24em")

    @admin.display(description="slug", ordering="slug")
    def slug_text(self, obj: Organization) -> str:
        return clipped(obj.slug, width="16em")

    @admin.display(description="members", ordering="members_count")
    def members(self, obj: Organization) -> int:
        return obj.members_count

    @admin.display(description="balance", ordering="account__wallet__balance")
    def balance(self, obj: Organization) -> str:
        return format_ledger(obj.account.wallet.balance)

    @admin.display(description="held")
    def held(self, obj: Organization) -> str:
        return format_ledger(obj.account.wallet.held)

    @admin.display(description="available")
    def available(self, obj: Organization) -> str:
        return format_ledger(obj.account.wallet.available)

    @admin.display(description="grants remaining")
    def grants_remaining(self, obj: Organization) -> str:
        return format_ledger(obj.account.wallet.grants_remaining)

    # -- the page ---------------------------------------------------------------------

    @admin.display(description="account")
    def account_link(self, obj: Organization) -> str:
        url = reverse("admin:accounts_user_change", args=[obj.account_id])
        return format_html('<a href="{}">{}</a> (holds the wallet and the keys)', url, obj.account.email)

    @admin.display(description="Pages")
    def wallet_links(self, obj: Organization) -> str:
        links = self._links(obj)
        return format_html(
            '<a href="{}">Wallet, grants and ledger</a> · <a href="{}">All transactions</a> · <a href="{}">Usage</a>',
            links["wallet_url"], links["ledger_url"], links["usage_url"],
        )  # fmt: skip

    def _links(self, obj: Organization) -> dict:
        wallet = obj.account.wallet
        return {
            "wallet_url": reverse("admin:billing_wallet_change", args=[wallet.pk]),
            "grant_url": reverse("admin:billing_wallet_grant", args=[wallet.pk]),
            "ledger_url": f"{reverse('admin:billing_credittransaction_changelist')}?wallet__id__exact={wallet.pk}",
            "usage_url": f"{reverse('admin:index')}reporting/usage/?user_id={obj.account_id}",
            "members_url": f"{reverse('admin:organizations_membership_changelist')}?organization__id__exact={obj.pk}",
            "invitations_url": (
                f"{reverse('admin:organizations_invitation_changelist')}?organization__id__exact={obj.pk}"
            ),
        }

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict,
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Organization | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self._links(obj))
            # The grant form checks the same (billing.admin.WalletAdmin.grant_view): no button that answers 403.
            user = request.user
            context["can_grant"] = (
                user.is_active and user.is_staff and user.has_perms([GRANT_PERMISSION, "billing.view_wallet"])
            )
            keys = list(organization_keys(organization=obj).order_by(F("revoked_at").desc(nulls_first=True), "-id"))
            for key in keys:
                key.budget_text = _budget(key.budget_credits, key.budget_window)
            context["api_keys"] = keys
        return super().render_change_form(request, context, add, change, form_url, obj)


# --- members -----------------------------------------------------------------------


class MemberStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("current", "Current"), ("removed", "Removed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> QuerySet[Membership]:
        if self.value() == "current":
            return queryset.filter(removed_at__isnull=True)
        if self.value() == "removed":
            return queryset.filter(removed_at__isnull=False)
        return queryset


class MembershipForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["role", "budget_credits", "budget_window"]

    def clean(self) -> dict:
        # The organization's rule, said on the field (member_role_set keeps it too, under a lock).
        cleaned = super().clean()
        member = self.instance
        if "role" in self.changed_data and member.role == Role.OWNER and cleaned.get("role") != Role.OWNER:
            others = Membership.objects.filter(
                organization_id=member.organization_id, role=Role.OWNER, removed_at__isnull=True
            ).exclude(pk=member.pk)
            if not others.exists():
                self.add_error("role", "An organization always has an owner: make another member owner first.")
        return cleaned


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    form = MembershipForm
    list_display = ["person", "organization_link", "role", "budget", "joined", "removed"]
    list_filter = [MemberStateFilter, "role"]
    search_fields = ["user__email", "organization__name", "organization__slug"]
    list_select_related = ["user", "organization"]
    allowed_lookups = ("organization__id__exact",)
    readonly_fields = ["organization", "user", "created_at", "removed_at", "spend_this_window", "keys_link"]
    fieldsets = [
        (None, {"fields": ["organization", "user", "role", "created_at", "removed_at"]}),
        (
            "Member budget",
            {
                "fields": ["budget_credits", "budget_window", "spend_this_window"],
                "description": "At most this many credits spent or held per window (UTC; weeks start on Monday; "
                "empty window: lifetime) through the organization's keys this member made. Empty: no budget.",
            },
        ),
        ("API keys", {"fields": ["keys_link"]}),
    ]
    actions = ["remove_members"]

    joined = timestamp_column("created_at", "joined", day=True)
    removed = timestamp_column("removed_at", "removed", day=True)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup in self.allowed_lookups or super().lookup_allowed(lookup, value, request)

    @admin.display(description="person", ordering="user__email")
    def person(self, obj: Membership) -> str:
        return clipped(obj.user.email, width="22em")

    @admin.display(description="organization", ordering="organization__name")
    def organization_link(self, obj: Membership) -> str:
        url = reverse("admin:organizations_organization_change", args=[obj.organization_id])
        return format_html('<a href="{}">{}</a>', url, clipped(obj.organization.name, width="16em"))

    @admin.display(description="budget")
    def budget(self, obj: Membership) -> str:
        return _budget(obj.budget_credits, obj.budget_window)

    @admin.display(description="Spent this window")
    def spend_this_window(self, obj: Membership) -> str:
        spend = members_spend(memberships=[obj])[obj.pk]
        resets = f"resets at {spend.resets_at:%Y-%m-%d %H:%M} UTC" if spend.resets_at else "lifetime, never resets"
        return f"{format_ledger(spend.spent)} spent, {format_ledger(spend.held)} held ({resets})"

    @admin.display(description="Keys they made")
    def keys_link(self, obj: Membership) -> str:
        count = obj.api_keys.count()
        url = f"{reverse('admin:accounts_apikey_changelist')}?membership__id__exact={obj.pk}"
        return format_html('<a href="{}">{} key{}</a>', url, count, "" if count == 1 else "s")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # people join by accepting an invitation (or make an organization)

    def has_delete_permission(self, request: HttpRequest, obj: Membership | None = None) -> bool:
        return False  # never deleted: "Remove member" ends it and revokes their keys

    def has_change_permission(self, request: HttpRequest, obj: Membership | None = None) -> bool:
        # A removed member's row is history; they come back through an invitation.
        return super().has_change_permission(request, obj) and (obj is None or obj.removed_at is None)

    def save_model(self, request: HttpRequest, obj: Membership, form: forms.ModelForm, change: bool) -> None:
        member = Membership.objects.select_related("organization").get(pk=obj.pk)
        if "role" in form.changed_data:
            member_role_set(actor=staff_actor(organization=member.organization), member=member, role=obj.role)
        budget = {name: form.cleaned_data[name] for name in ("budget_credits", "budget_window")}
        if any(name in form.changed_data for name in budget):
            member_budget_set(member=member, **budget)

    @admin.action(description="Remove the selected members (and revoke the keys they made)", permissions=["change"])
    def remove_members(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        removed = 0
        for member in queryset.filter(removed_at__isnull=True).select_related("organization", "user"):
            try:
                member_remove(actor=staff_actor(organization=member.organization), member=member)
            except ApplicationError as exc:
                self.message_user(request, f"{member.user.email} in {member.organization}: {_error_text(exc)}",
                                  messages.ERROR)  # fmt: skip
            else:
                removed += 1
        if removed:
            self.message_user(request, f"Removed {removed} member{'s' if removed != 1 else ''}.", messages.SUCCESS)


# --- invitations -------------------------------------------------------------------


class InvitationStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("open", "Open"), ("accepted", "Accepted"), ("withdrawn", "Withdrawn")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Invitation]) -> QuerySet[Invitation]:
        match self.value():
            case "open":
                return queryset.filter(accepted_at__isnull=True, revoked_at__isnull=True)
            case "accepted":
                return queryset.filter(accepted_at__isnull=False)
            case "withdrawn":
                return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Read-only (the link's token exists only in the email); withdrawn with the action."""

    list_display = ["email_text", "organization_link", "role", "invited_by_email", "sent", "expires", "state"]
    list_filter = [InvitationStateFilter, "role"]
    search_fields = ["email", "organization__name", "organization__slug"]
    list_select_related = ["organization", "invited_by"]
    allowed_lookups = ("organization__id__exact",)
    fields = [
        "organization", "email", "role", "invited_by", "created_at", "expires_at", "accepted_at", "accepted_by",
        "revoked_at",
    ]  # fmt: skip
    readonly_fields = fields
    actions = ["withdraw"]

    sent = timestamp_column("created_at", "sent", day=True)
    expires = timestamp_column("expires_at", "expires")

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup in self.allowed_lookups or super().lookup_allowed(lookup, value, request)

    @admin.display(description="email", ordering="email")
    def email_text(self, obj: Invitation) -> str:
        return clipped(obj.email, width="20em")

    @admin.display(description="organization", ordering="organization__name")
    def organization_link(self, obj: Invitation) -> str:
        url = reverse("admin:organizations_organization_change", args=[obj.organization_id])
        return format_html('<a href="{}">{}</a>', url, clipped(obj.organization.name, width="14em"))

    @admin.display(description="invited by", ordering="invited_by__email")
    def invited_by_email(self, obj: Invitation) -> str:
        return clipped(obj.invited_by.email, width="14em")

    @admin.display(description="state")
    def state(self, obj: Invitation) -> str:
        if obj.accepted_at is not None:
            return "accepted"
        if obj.revoked_at is not None:
            return "withdrawn"
        return "expired" if obj.expires_at <= timezone.now() else "open"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sent by an owner or admin through the API, which emails the link

    def has_change_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        # The withdraw action needs the change permission; the page itself stays read-only.
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False  # withdrawn, never deleted: it says who invited whom

    @admin.action(description="Withdraw the selected invitations", permissions=["change"])
    def withdraw(self, request: HttpRequest, queryset: QuerySet[Invitation]) -> None:
        withdrawn = 0
        for invitation in queryset.filter(accepted_at__isnull=True, revoked_at__isnull=True):
            invitation_revoke(invitation=invitation)
            withdrawn += 1
        self.message_user(request, f"Withdrew {withdrawn} invitation{'s' if withdrawn != 1 else ''}.", messages.SUCCESS)
