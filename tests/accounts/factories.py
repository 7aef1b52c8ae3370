"""Users for tests, made the one way the product makes them (accounts.services.user_create:
the user and its wallet). Personas (owner, other_user, staff_user) are in tests/conftest.py."""

import factory

from accounts.models import User
from accounts.services import user_create


class UserFactory(factory.Factory):
    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = None
    is_staff = False

    @classmethod
    def _create(cls, model_class: type[User], **kwargs) -> User:  # noqa: ANN003
        return user_create(**kwargs)
