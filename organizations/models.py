"""Organizations: a team's shared wallet, its members and their roles.

An organization is an account, as on GitHub: `Organization.account` is a User row
of kind `organization` that cannot log in (no usable password, never staff). It
holds what a person's account holds, through the same code: the wallet and its
ledger, holds, grants, Stripe top-ups and auto top-up, the spending cap, and the
organization's API keys (`ApiKey.user` is the account; `ApiKey.membership` names
the member who made the key, whose turns it is attributed to and whose budget it
counts against). Every billing service takes `user=organization.account`.

Members are people (User rows of kind `person`) with a role. A membership is never
deleted: removing a member sets `removed_at` (their keys are revoked, and reports
keep naming them); inviting them again restores the same row."""

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from accounts.models import SpendWindow


class Role(models.TextChoices):
    """What a member may do (organizations.permissions): owners and admins manage
    members, invitations, keys, limits and top-ups; only an owner makes or unmakes
    an owner. Members see the balance and their own usage, and make their own keys."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


MANAGERS = (Role.OWNER, Role.ADMIN)


class Organization(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True)
    # The account that holds the wallet and the keys (accounts.User, kind organization).
    account = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="organization")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="memberships")
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.MEMBER)
    # What this member may spend or hold per window through the organization's keys
    # (billing.limits, held like a key's budget); null: no member budget.
    budget_credits = models.DecimalField(
        max_digits=18, decimal_places=8, null=True, blank=True, validators=[MinValueValidator(0)],
        help_text="Credits this member may spend or hold per window through the organization's keys.",
    )  # fmt: skip
    budget_window = models.CharField(max_length=8, choices=SpendWindow.choices, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["organization", "id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="organizations_membership_unique"),
            models.CheckConstraint(
                condition=Q(budget_credits__isnull=True) | Q(budget_credits__gte=0),
                name="organizations_membership_budget_not_negative",
            ),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="organizations_membership_role_known"),
        ]
        indexes = [models.Index(fields=["user"], condition=Q(removed_at__isnull=True), name="organizations_member_of")]

    def __str__(self) -> str:
        return f"{self.user} ({self.role}) in {self.organization}"

    @property
    def is_active(self) -> bool:
        return self.removed_at is None

    @property
    def manages(self) -> bool:
        return self.role in MANAGERS


class Invitation(models.Model):
    """A single-use invitation by email: the link carries a random token, stored only
    as its SHA-256 (like API keys). Accepted by the person whose account has this
    email, once, before `expires_at`."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(role__in=Role.values), name="organizations_invitation_role_known"),
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.organization} as {self.role}"

    @property
    def is_open(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None
