from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User, all_scopes
from accounts.permissions import STAFF_GROUP_PERMISSIONS
from accounts.services import api_key_create, user_create, user_make_staff


class Command(BaseCommand):
    help = "Print a new API key for EMAIL (the only time the key is shown), with every scope: chat, openai, keys."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("email")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--create-user", action="store_true", help="Create the user if it does not exist.")
        parser.add_argument(
            "--staff",
            action="store_true",
            help="Make the user staff and a member of the 'Parley staff' group (the staff API's permissions).",
        )

    @transaction.atomic
    def handle(self, *args, email: str, name: str, create_user: bool, staff: bool, **options) -> None:
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            if not create_user:
                raise CommandError(f"No user with email {email}; pass --create-user to create one.")
            user = user_create(email=email)
        if staff:
            group = user_make_staff(user=user)
            # On stderr: stdout is the key alone, for scripts that capture it.
            self.stderr.write(
                f"{user.email} is staff and in the group '{group.name}', which holds "
                f"{', '.join(STAFF_GROUP_PERMISSIONS)}: what the staff API endpoints ask for."
            )
        # Every scope, `keys` included: the operator hands out narrower keys made with it.
        _, raw_key = api_key_create(user=user, name=name, scopes=all_scopes())
        self.stdout.write(raw_key)
