"""Who may do what in an organization. Another organization's objects are 404 (the
caller is not told they exist, organizations.selectors); a member's attempt at a
manager's action is 403 naming the role it needs (RoleRequired)."""

from rest_framework import status

from core.exceptions import ApplicationError


class RoleRequired(ApplicationError):
    status_code = status.HTTP_403_FORBIDDEN
    code = "role_required"

    def __init__(self, *, organization, needed: tuple[str, ...], role: str) -> None:  # noqa: ANN001
        names = " or ".join(str(name) for name in needed)
        super().__init__(f"This needs the {names} role in organization '{organization.name}'; your role is {role}.")
