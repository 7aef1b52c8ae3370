"""The "Parley staff" group: every permission the staff API endpoints ask for
(accounts/permissions.py), the same ones the matching admin pages ask for. The
list is frozen here, as a migration must be; tests/accounts/test_staff.py checks
that it still equals accounts.permissions.STAFF_GROUP_PERMISSIONS."""

from django.db import migrations

STAFF_GROUP = "Parley staff"
PERMISSIONS = (
    "billing.grant_credits",
    "billing.view_credittransaction",
    "billing.view_wallet",
    "reporting.view_usage",
)


def create_staff_group(apps, schema_editor):
    # Permissions are otherwise made after the last migration (post_migrate); make
    # those of the two apps now, so a fresh database gets the group complete.
    from django.contrib.auth.management import create_permissions

    for label in ("billing", "reporting"):
        config = apps.get_app_config(label)
        unset = getattr(config, "models_module", None) is None  # a migration state's stub has none
        if unset:
            config.models_module = True
        create_permissions(config, verbosity=0, using=schema_editor.connection.alias, apps=apps)
        if unset:
            config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=STAFF_GROUP)
    for name in PERMISSIONS:
        app_label, codename = name.split(".")
        group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def remove_staff_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=STAFF_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("billing", "0001_initial"),
        ("reporting", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_staff_group, remove_staff_group)]
