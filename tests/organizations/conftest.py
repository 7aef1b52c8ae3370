from decimal import Decimal

import pytest

from accounts.services import user_create
from billing.services import wallet_grant
from organizations.models import Membership, Organization, Role
from organizations.services import organization_create


def member_add(organization: Organization, email: str, role: str = Role.MEMBER) -> Membership:
    """A member, as an accepted invitation makes one (tests of other rules)."""
    user = user_create(email=email)
    return Membership.objects.create(organization=organization, user=user, role=role)


@pytest.fixture
def org(db, owner) -> Organization:  # noqa: ANN001
    """'Acme', owned by `owner`, with 100 credits in its wallet."""
    organization = organization_create(creator=owner, name="Acme")
    wallet_grant(user=organization.account, amount=Decimal("100"), reason="test credits")
    return organization


# The /v1 fixtures (the `fast` alias, the live server's base URL) and the fake model servers.
from tests.openai_api.conftest import base_url, fast  # noqa: E402, F401
