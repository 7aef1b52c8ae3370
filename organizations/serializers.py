"""Bodies of `/api/v1/orgs/...` (organizations.api). Types and ranges here; the rules
(owners, roles, budgets) in organizations.services."""

from decimal import Decimal

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import ApiKey, SpendWindow
from accounts.serializers import MONEY_SCHEMA, ApiKeySerializer
from billing.fields import MoneyField
from billing.limits import WindowSpend, members_spend
from billing.money import format_ledger
from core.fields import StrictCharField
from organizations.models import Invitation, Membership, Organization, Role

NAME_MAX = Organization._meta.get_field("name").max_length
SLUG_MAX = Organization._meta.get_field("slug").max_length


class OrganizationSerializer(serializers.Serializer):
    """An organization as one of its members sees it (read from their membership,
    organizations.selectors.organizations_of): the wallet's figures are the
    organization's, `role` is the caller's."""

    id = serializers.IntegerField(source="organization_id", read_only=True)
    name = serializers.CharField(source="organization.name", read_only=True)
    slug = serializers.CharField(source="organization.slug", read_only=True)
    role = serializers.ChoiceField(choices=Role.choices, read_only=True, help_text="Your role in it.")
    balance = MoneyField(source="organization.account.wallet.balance", help_text="The organization's credits.")
    held = MoneyField(source="organization.account.wallet.held", help_text="Held for its turns in flight.")
    available = MoneyField(source="organization.account.wallet.available", help_text="balance - held.")
    members = serializers.IntegerField(source="members_count", read_only=True, help_text="Current members.")
    created_at = serializers.DateTimeField(source="organization.created_at", read_only=True)


class OrganizationCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=NAME_MAX)
    slug = StrictCharField(
        max_length=SLUG_MAX, required=False, allow_blank=True,
        help_text="Names the organization in URLs and reports; made from the name when left out.",
    )  # fmt: skip


class OrganizationRenameSerializer(serializers.Serializer):
    name = StrictCharField(max_length=NAME_MAX)


class MemberSerializer(serializers.ModelSerializer):
    """A member, with their budget through the organization's keys and its current
    window (billing.limits.members_spend; the list view reads every row's in one
    query, context["spend"]). What another member spent is usage, which a plain
    member does not see (context["viewer"], the caller's membership): null for them."""

    email = serializers.EmailField(source="user.email", read_only=True)
    budget_credits = MoneyField(help_text="Credits the member may spend per budget_window; null: no budget.")
    spent = serializers.SerializerMethodField(
        help_text="Credits charged in the current window; null: no budget, or another member's seen by a plain member."
    )
    held = serializers.SerializerMethodField(
        help_text="Credits held in the current window; null: no budget, or another member's seen by a plain member."
    )
    resets_at = serializers.SerializerMethodField(help_text="When the window ends (UTC); null for lifetime.")

    class Meta:
        model = Membership
        fields = [
            "id", "user_id", "email", "role", "budget_credits", "budget_window", "spent", "held", "resets_at",
            "created_at", "removed_at",
        ]  # fmt: skip
        read_only_fields = fields

    def _hidden(self, member: Membership) -> bool:
        viewer = self.context.get("viewer")
        return member.budget_credits is None or (viewer is not None and not viewer.manages and viewer.pk != member.pk)

    def _spend(self, member: Membership) -> WindowSpend:
        spend = self.context.get("spend")
        if spend is None or member.pk not in spend:
            spend = members_spend(memberships=[member])
        return spend[member.pk]

    # A member with no budget counts nothing (billing.limits keeps no counter): null.
    @extend_schema_field({**MONEY_SCHEMA, "nullable": True})
    def get_spent(self, member: Membership) -> str | None:
        return None if self._hidden(member) else format_ledger(self._spend(member).spent)

    @extend_schema_field({**MONEY_SCHEMA, "nullable": True})
    def get_held(self, member: Membership) -> str | None:
        return None if self._hidden(member) else format_ledger(self._spend(member).held)

    @extend_schema_field({"type": "string", "format": "date-time", "nullable": True})
    def get_resets_at(self, member: Membership) -> str | None:
        if member.budget_credits is None:
            return None
        resets_at = self._spend(member).resets_at
        return None if resets_at is None else serializers.DateTimeField().to_representation(resets_at)


class MembershipSerializer(MemberSerializer):
    """A membership with its organization (an accepted invitation's answer)."""

    organization_id = serializers.IntegerField(read_only=True)
    organization_name = serializers.CharField(source="organization.name", read_only=True)

    class Meta(MemberSerializer.Meta):
        fields = ["organization_id", "organization_name", *MemberSerializer.Meta.fields]
        read_only_fields = fields


class MemberUpdateSerializer(serializers.Serializer):
    """PATCH orgs/{org_id}/members/{id}: only the fields sent change."""

    role = serializers.ChoiceField(
        choices=Role.choices, required=False,
        help_text="Only an owner makes, demotes or removes an owner (403 naming it); the last owner stays (422).",
    )  # fmt: skip
    budget_credits = serializers.DecimalField(
        max_digits=18, decimal_places=8, min_value=Decimal("0"), allow_null=True, required=False,
        help_text="Credits the member may spend (or hold) per budget_window through the organization's keys; null: "
        "no budget. Over it their turns are refused: 402 (chat API) or 429 insufficient_quota (/v1). Needs the "
        "key's `keys` scope.",
    )  # fmt: skip
    budget_window = serializers.ChoiceField(
        choices=SpendWindow.choices, allow_null=True, required=False,
        help_text="day, week (from Monday) or month, UTC; null: a lifetime budget. Needs the key's `keys` scope.",
    )  # fmt: skip


class InvitationSerializer(serializers.ModelSerializer):
    """An invitation as its organization's owners and admins see it: never its token,
    which only the email carries."""

    invited_by = serializers.EmailField(source="invited_by.email", read_only=True)
    state = serializers.SerializerMethodField(help_text="open, accepted, withdrawn or expired.")

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "invited_by", "created_at", "expires_at", "accepted_at", "revoked_at", "state"]
        read_only_fields = fields

    @extend_schema_field({"type": "string", "enum": ["open", "accepted", "withdrawn", "expired"]})
    def get_state(self, invitation: Invitation) -> str:
        return invitation_state(invitation)


def invitation_state(invitation: Invitation) -> str:
    if invitation.accepted_at is not None:
        return "accepted"
    if invitation.revoked_at is not None:
        return "withdrawn"
    return "expired" if invitation.expires_at <= timezone.now() else "open"


class InvitationCreateSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254, help_text="Where the single-use link goes.")
    role = serializers.ChoiceField(
        choices=Role.choices, default=Role.MEMBER, help_text="Only an owner invites an owner (403 naming it)."
    )


class InvitationPreviewSerializer(serializers.Serializer):
    """GET orgs/invitations/{token}: what accepting it would do."""

    organization = serializers.CharField(source="organization.name", read_only=True)
    organization_slug = serializers.CharField(source="organization.slug", read_only=True)
    email = serializers.EmailField(read_only=True, help_text="Only the account with this email may accept it.")
    role = serializers.ChoiceField(choices=Role.choices, read_only=True)
    invited_by = serializers.EmailField(source="invited_by.email", read_only=True)
    expires_at = serializers.DateTimeField(read_only=True)
    state = serializers.SerializerMethodField(help_text="open, accepted, withdrawn or expired: only open accepts.")

    @extend_schema_field({"type": "string", "enum": ["open", "accepted", "withdrawn", "expired"]})
    def get_state(self, invitation: Invitation) -> str:
        return invitation_state(invitation)


class OrganizationKeySerializer(ApiKeySerializer):
    """An organization's key, with the member who made it (its turns are theirs and
    count against their budget)."""

    member_id = serializers.IntegerField(source="membership_id", read_only=True, allow_null=True)
    member_email = serializers.SerializerMethodField(help_text="The member who made the key.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "member_id", "member_email"]
        read_only_fields = fields

    @extend_schema_field({"type": "string", "format": "email", "nullable": True})
    def get_member_email(self, api_key: ApiKey) -> str | None:
        return None if api_key.membership is None else api_key.membership.user.email


class OrganizationKeyCreatedSerializer(OrganizationKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret, shown only this once.")

    class Meta(OrganizationKeySerializer.Meta):
        fields = [*OrganizationKeySerializer.Meta.fields, "key"]
        read_only_fields = fields
