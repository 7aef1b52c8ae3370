import pytest
from django.contrib.auth.models import Permission

from tests.conftest import make_user


@pytest.fixture
def staff_user(db):  # noqa: ANN001, ANN201
    """Billing's staff persona may grant credits (billing.grant_credits); the staff
    member without it is `staff_without_grant`."""
    user = make_user("staff@example.com", staff=True, password="staff-password-123")
    user.user_permissions.add(Permission.objects.get(content_type__app_label="billing", codename="grant_credits"))
    return user


@pytest.fixture
def staff_without_grant(db):  # noqa: ANN001, ANN201
    return make_user("support@example.com", staff=True)
