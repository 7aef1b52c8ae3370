from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User
from accounts.services import api_key_create, user_create


class Command(BaseCommand):
    help = "Print a new API key for EMAIL (the only time the key is shown)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("email")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--create-user", action="store_true", help="Create the user if it does not exist.")
        parser.add_argument("--staff", action="store_true", help="Make the user staff.")

    @transaction.atomic
    def handle(self, *args, email: str, name: str, create_user: bool, staff: bool, **options) -> None:
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            if not create_user:
                raise CommandError(f"No user with email {email}; pass --create-user to create one.")
            user = user_create(email=email)
        if staff and not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        _, raw_key = api_key_create(user=user, name=name)
        self.stdout.write(raw_key)
