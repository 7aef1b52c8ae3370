from django.db.models import Count, Q, QuerySet
from django.http import Http404

from accounts.models import ApiKey, User
from core.pagination import BIGINT_MAX
from organizations.models import MANAGERS, Invitation, Membership, Organization
from organizations.permissions import RoleRequired


def api_key_membership(*, api_key: ApiKey) -> Membership | None:
    """The member who made an organization's key, with their person and organization
    (one query, cached on the key for the rest of the request); None for a person's key."""
    if api_key.membership_id is None:
        return None
    if not ApiKey.membership.is_cached(api_key):
        api_key.membership = Membership.objects.select_related("user", "organization").get(pk=api_key.membership_id)
    return api_key.membership


def memberships_of(*, user: User) -> QuerySet[Membership]:
    """The person's current memberships, with their organizations."""
    return Membership.objects.filter(user=user, removed_at__isnull=True).select_related("organization")


def membership_for(*, user: User, organization_id: int, roles: tuple[str, ...] = ()) -> Membership:
    """The caller's current membership of the organization: 404 when they are not a
    member (another organization's objects are not theirs to know of); with
    `roles`, 403 naming them when theirs is not one."""
    if not 0 < organization_id <= BIGINT_MAX:  # a foreign key's lookup sends any int on to the database
        raise Http404("No such organization.")
    membership = memberships_of(user=user).filter(organization_id=organization_id).first()
    if membership is None:
        raise Http404("No such organization.")
    if roles and membership.role not in roles:
        raise RoleRequired(organization=membership.organization, needed=roles, role=membership.role)
    return membership


def manager_for(*, user: User, organization_id: int) -> Membership:
    """The caller's membership, when it is an owner's or an admin's (403 otherwise)."""
    return membership_for(user=user, organization_id=organization_id, roles=MANAGERS)


def members_of(*, organization: Organization, include_removed: bool = False) -> QuerySet[Membership]:
    members = Membership.objects.filter(organization=organization).select_related("user")
    if not include_removed:
        members = members.filter(removed_at__isnull=True)
    return members.order_by("id")


def member_of(*, organization: Organization, member_id: int) -> Membership:
    """A current member by their membership id; 404 in any other organization."""
    member = members_of(organization=organization).filter(pk=member_id).first()
    if member is None:
        raise Http404("No such member.")
    return member


def invitations_of(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(organization=organization).select_related("invited_by")


def organization_keys(*, organization: Organization, membership: Membership | None = None) -> QuerySet[ApiKey]:
    """The organization's keys (with `membership`: only the ones that member made)."""
    keys = ApiKey.objects.filter(user_id=organization.account_id).select_related("membership__user")
    if membership is not None:
        keys = keys.filter(membership=membership)
    return keys


def managers_emails(*, account_id: int) -> list[str]:
    """Where an organization's notices go: its owners' and admins' addresses."""
    return list(
        Membership.objects.filter(
            organization__account_id=account_id, role__in=MANAGERS, removed_at__isnull=True
        ).values_list("user__email", flat=True)
    )


def organizations_of(*, user: User) -> QuerySet[Membership]:
    """The person's current memberships with what GET orgs shows of each organization:
    its wallet (one join) and how many members it has (`members_count`)."""
    return (
        memberships_of(user=user)
        .select_related("organization__account__wallet")
        .annotate(
            members_count=Count(
                "organization__memberships", filter=Q(organization__memberships__removed_at__isnull=True)
            )
        )
        .order_by("organization__name", "organization_id")
    )
