"""Writes of organizations: making one, invitations, members and their roles and
budgets, and the organization's keys. Money never moves here: the wallet is the
organization's account's (organizations.models), moved by billing.services like
any other.

Rules kept here, under a lock of the organization's row so two admins acting at
once cannot break them:
- there is always at least one owner (the last one can be neither demoted nor
  removed);
- only an owner makes, demotes or removes an owner;
- removing a member revokes every key they made for the organization.
"""

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import ApiKey, User
from accounts.services import api_key_create, limit_values_clean, user_create
from core.exceptions import StateConflict, field_error
from organizations.models import MANAGERS, Invitation, Membership, Organization, Role
from organizations.permissions import RoleRequired

INVITATION_DAYS = 7
# An organization's account has this email (unique, like every account's), on a
# domain that can never receive mail: notices go to its owners and admins instead.
ACCOUNT_EMAIL_DOMAIN = "organizations.parley.invalid"
NAME_MAX = Organization._meta.get_field("name").max_length
SLUG_MAX = Organization._meta.get_field("slug").max_length


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _person(user: User) -> None:
    if user.is_organization:
        raise StateConflict("An organization's own account cannot be a member; use a person's API key.")


# --- organizations -----------------------------------------------------------------


def _name_clean(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > NAME_MAX:
        raise field_error("name", f"A name is 1 to {NAME_MAX} characters.")
    return name


def _slug_clean(slug: str) -> str:
    cleaned = slugify(slug or "")[:SLUG_MAX].strip("-")
    if not cleaned:
        raise field_error("slug", "A slug needs letters or digits (it names the organization in URLs and reports).")
    return cleaned


@transaction.atomic
def organization_create(*, creator: User, name: str, slug: str = "") -> Organization:
    """A new organization, its account (with an empty wallet, as every account gets)
    and `creator` as its first owner."""
    _person(creator)
    name = _name_clean(name)
    slug = _slug_clean(slug or name)
    if Organization.objects.filter(slug=slug).exists():
        raise field_error("slug", f"The slug {slug!r} is taken; choose another.")
    account = user_create(email=f"{slug}@{ACCOUNT_EMAIL_DOMAIN}", kind=User.Kind.ORGANIZATION)
    try:
        with transaction.atomic():
            organization = Organization.objects.create(name=name, slug=slug, account=account)
    except IntegrityError:
        raise field_error("slug", f"The slug {slug!r} is taken; choose another.") from None
    Membership.objects.create(organization=organization, user=creator, role=Role.OWNER)
    return organization


def organization_rename(*, organization: Organization, name: str) -> Organization:
    organization.name = _name_clean(name)
    Organization.objects.filter(pk=organization.pk).update(name=organization.name)
    return organization


def _locked(organization: Organization) -> Organization:
    """The organization's row, locked until the transaction ends: every change of
    roles or members takes it first, so the owner rules hold under races."""
    return Organization.objects.select_for_update().get(pk=organization.pk)


# --- invitations ---------------------------------------------------------------------


def _role_clean(role: str) -> str:
    if role not in Role.values:
        raise field_error("role", f"One of: {', '.join(Role.values)}.")
    return role


def _grant_role_check(*, actor: Membership, role: str) -> None:
    """Only an owner hands out (or takes away) the owner role."""
    if role == Role.OWNER and actor.role != Role.OWNER:
        raise RoleRequired(organization=actor.organization, needed=(Role.OWNER,), role=actor.role)


def invitation_url(token: str) -> str:
    return f"{settings.SITE_URL.rstrip('/')}/api/v1/orgs/invitations/{token}"


@transaction.atomic
def invitation_create(*, actor: Membership, email: str, role: str = Role.MEMBER) -> tuple[Invitation, str]:
    """An invitation by email, sent through Django's email backend after commit. The
    link's token is shown only in the email (and returned here for the caller to
    hand over some other way); only its hash is stored. An earlier open invitation
    of the same address is revoked: the newest link is the one that works."""
    email = User.objects.normalize_email((email or "").strip())
    if "@" not in email or len(email) > 254:
        raise field_error("email", "A valid email address is required.")
    role = _role_clean(role)
    _grant_role_check(actor=actor, role=role)
    organization = _locked(actor.organization)
    if Membership.objects.filter(
        organization=organization, user__email__iexact=email, removed_at__isnull=True
    ).exists():
        raise StateConflict(f"{email} is already a member of '{organization.name}'.")
    now = timezone.now()
    Invitation.objects.filter(
        organization=organization, email__iexact=email, accepted_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=now)
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        organization=organization, email=email, role=role, token_hash=_token_hash(token), invited_by=actor.user,
        expires_at=now + timedelta(days=INVITATION_DAYS),
    )  # fmt: skip
    transaction.on_commit(lambda: _invitation_send(invitation, token), robust=True)
    return invitation, token


def _invitation_send(invitation: Invitation, token: str) -> None:
    organization = invitation.organization
    send_mail(
        subject=f"Parley: you are invited to join {organization.name}",
        message=(
            f"{invitation.invited_by.email} invites you to join the organization '{organization.name}' on Parley "
            f"as {invitation.role}.\n\n"
            f"Accept with your own API key before {invitation.expires_at:%Y-%m-%d %H:%M} UTC:\n\n"
            f"    curl -X POST -H 'Authorization: Bearer <your key>' {invitation_url(token)}\n\n"
            f"The link works once, for the account with this email address ({invitation.email})."
        ),
        from_email=None,
        recipient_list=[invitation.email],
    )


def invitation_for_token(*, token: str) -> Invitation | None:
    return Invitation.objects.select_related("organization", "invited_by").filter(token_hash=_token_hash(token)).first()


def _invitation_usable(invitation: Invitation | None) -> Invitation:
    if invitation is None:
        raise StateConflict("This invitation link is not valid.")
    if invitation.accepted_at is not None:
        raise StateConflict("This invitation was already accepted; an invitation works once.")
    if invitation.revoked_at is not None:
        raise StateConflict("This invitation was withdrawn; ask for a new one.")
    if invitation.expires_at <= timezone.now():
        raise StateConflict(f"This invitation expired at {invitation.expires_at:%Y-%m-%dT%H:%M:%SZ}; ask for a new one.")
    return invitation


@transaction.atomic
def invitation_accept(*, user: User, token: str) -> Membership:
    """Joins the invitation's organization with its role, once: the person whose
    account has the invited email. A removed member comes back on their old row
    (their old keys stay revoked)."""
    _person(user)
    invitation = _invitation_usable(invitation_for_token(token=token))
    organization = _locked(invitation.organization)
    # Read again under the lock: two accepts of one link cannot both pass.
    invitation = _invitation_usable(Invitation.objects.select_for_update().get(pk=invitation.pk))
    if user.email.lower() != invitation.email.lower():
        raise StateConflict(f"This invitation is for {invitation.email}; sign in with that account to accept it.")
    now = timezone.now()
    membership, created = Membership.objects.get_or_create(
        organization=organization, user=user, defaults={"role": invitation.role}
    )
    if not created:
        if membership.removed_at is None:
            raise StateConflict(f"You are already a member of '{organization.name}'.")
        membership.role, membership.removed_at = invitation.role, None
        membership.budget_credits = membership.budget_window = None
        membership.save(update_fields=["role", "removed_at", "budget_credits", "budget_window"])
    Invitation.objects.filter(pk=invitation.pk).update(accepted_at=now, accepted_by=user)
    return membership


def invitation_revoke(*, invitation: Invitation) -> Invitation:
    Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    invitation.refresh_from_db(fields=["revoked_at"])
    return invitation


# --- members -------------------------------------------------------------------------


def _owners_left(organization: Organization, *, without: Membership) -> int:
    return (
        Membership.objects.filter(organization=organization, role=Role.OWNER, removed_at__isnull=True)
        .exclude(pk=without.pk)
        .count()
    )


def _under_lock(*, actor: Membership, member: Membership) -> Organization:
    """Locks the organization, then reads both memberships again: a role or a removal
    that committed while this call waited for the lock counts (an admin demoted a
    moment ago acts no more; a member made owner a moment ago is an owner). Staff act
    as an unsaved owner (staff_actor), which has nothing to read again."""
    organization = _locked(member.organization)
    member.refresh_from_db(fields=["role", "removed_at"])
    if member.removed_at is not None:
        raise StateConflict("This person is no longer a member.")
    if actor.pk is not None and actor.pk != member.pk:
        actor.refresh_from_db(fields=["role", "removed_at"])
        if actor.removed_at is not None:
            raise StateConflict("You are no longer a member of this organization.")
        if not actor.manages:
            raise RoleRequired(organization=organization, needed=MANAGERS, role=actor.role)
    return organization


@transaction.atomic
def member_role_set(*, actor: Membership, member: Membership, role: str) -> Membership:
    role = _role_clean(role)
    organization = _under_lock(actor=actor, member=member)
    _grant_role_check(actor=actor, role=role)
    _grant_role_check(actor=actor, role=member.role)  # an admin cannot demote an owner
    if member.role == Role.OWNER and role != Role.OWNER and not _owners_left(organization, without=member):
        raise StateConflict("An organization always has an owner: make another member owner first.")
    Membership.objects.filter(pk=member.pk).update(role=role)
    member.role = role
    return member


@transaction.atomic
def member_remove(*, actor: Membership, member: Membership) -> Membership:
    """Ends a membership (a member may also leave: actor is member) and revokes the
    keys they made for the organization; their turns and usage stay theirs."""
    try:
        organization = _under_lock(actor=actor, member=member)
    except StateConflict:
        member.refresh_from_db(fields=["removed_at"])
        if member.removed_at is not None:  # removed already: nothing more to do
            return member
        raise
    if actor.pk != member.pk:
        _grant_role_check(actor=actor, role=member.role)  # only an owner removes an owner
    if member.role == Role.OWNER and not _owners_left(organization, without=member):
        raise StateConflict("An organization always has an owner: make another member owner first.")
    now = timezone.now()
    Membership.objects.filter(pk=member.pk).update(removed_at=now)
    ApiKey.objects.filter(membership=member, revoked_at__isnull=True).update(revoked_at=now)
    member.removed_at = now
    return member


MEMBER_BUDGET_FIELDS = ("budget_credits", "budget_window")


def member_budget_set(*, member: Membership, **changes: Any) -> Membership:  # noqa: ANN401
    """A member's budget through the organization's keys: `budget_credits` (null:
    none) per `budget_window` (null: lifetime). Applies from the next request; what
    the window spent and holds still counts."""
    changes = limit_values_clean(changes, allowed=MEMBER_BUDGET_FIELDS)  # the rules key budgets follow
    if member.removed_at is not None:
        raise StateConflict("This person is no longer a member.")
    if changes:
        Membership.objects.filter(pk=member.pk).update(**changes)
        for name, value in changes.items():
            setattr(member, name, value)
    return member


# --- the organization's keys ----------------------------------------------------------


@transaction.atomic
def organization_api_key_create(*, member: Membership, name: str, **limits: Any) -> tuple[ApiKey, str]:  # noqa: ANN401
    """A key of the organization made by `member`: it spends the organization's
    wallet, is attributed to them and counts against their member budget. Made under
    the organization's lock, as removals are: a member removed meanwhile gets no key
    that removal would have missed."""
    _locked(member.organization)
    member.refresh_from_db(fields=["removed_at"])
    if member.removed_at is not None:
        raise StateConflict("This person is no longer a member.")
    return api_key_create(user=member.organization.account, name=name, membership=member, **limits)


def staff_actor(*, organization: Organization) -> Membership:
    """Who staff act as in the console (organizations.admin): an owner of the
    organization, so they may change any role or remove any member while its rules
    still hold (it keeps an owner). An unsaved row, never written."""
    return Membership(organization=organization, role=Role.OWNER)
