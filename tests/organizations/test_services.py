"""The owner rules hold against what changed while a call waited: every role change,
removal and key made for the organization reads the memberships again under the
organization's lock, so a stale picture of who is what decides nothing."""

import pytest

from core.exceptions import StateConflict
from organizations.models import Membership, Role
from organizations.permissions import RoleRequired
from organizations.services import member_remove, member_role_set, organization_api_key_create
from tests.organizations.conftest import member_add

pytestmark = pytest.mark.django_db


def test_an_admin_cannot_demote_someone_made_owner_since_they_looked(org, owner):
    founder = Membership.objects.get(organization=org, user=owner)
    admin = member_add(org, "admin@example.com", Role.ADMIN)
    ada = member_add(org, "ada@example.com")
    seen_by_admin = Membership.objects.get(pk=ada.pk)  # a member, when the admin read it
    member_role_set(actor=founder, member=ada, role=Role.OWNER)
    with pytest.raises(RoleRequired, match="needs the owner role"):
        member_role_set(actor=admin, member=seen_by_admin, role=Role.MEMBER)
    with pytest.raises(RoleRequired, match="needs the owner role"):
        member_remove(actor=admin, member=seen_by_admin)
    assert Membership.objects.get(pk=ada.pk).role == Role.OWNER and ada.user.memberships.get().removed_at is None


def test_an_admin_demoted_since_they_looked_acts_no_more(org, owner):
    founder = Membership.objects.get(organization=org, user=owner)
    admin = member_add(org, "admin@example.com", Role.ADMIN)
    ada = member_add(org, "ada@example.com")
    stale_admin = Membership.objects.get(pk=admin.pk)
    member_role_set(actor=founder, member=admin, role=Role.MEMBER)
    with pytest.raises(RoleRequired, match="your role is member"):
        member_remove(actor=stale_admin, member=ada)
    member_remove(actor=founder, member=admin)
    with pytest.raises(StateConflict, match="no longer a member"):
        member_role_set(actor=stale_admin, member=ada, role=Role.ADMIN)
    assert Membership.objects.get(pk=ada.pk).removed_at is None


def test_a_member_removed_since_they_looked_gets_no_key(org, owner):
    founder = Membership.objects.get(organization=org, user=owner)
    ada = member_add(org, "ada@example.com")
    stale = Membership.objects.get(pk=ada.pk)
    member_remove(actor=founder, member=ada)
    with pytest.raises(StateConflict, match="no longer a member"):
        organization_api_key_create(member=stale, name="late")
    assert not stale.api_keys.exists()
    assert member_remove(actor=founder, member=stale).removed_at is not None  # removing again changes nothing
