"""The upstreams every deployment had before routing existed: `openai` and
`anthropic` (their host and key from the OPENAI_* / ANTHROPIC_* settings, which an
empty base URL means) and the built-in `local`. ModelPrice.provider names them."""

from django.db import migrations

DEFAULTS = [
    {"name": "openai", "kind": "openai", "api_key_env": "OPENAI_API_KEY"},
    {"name": "anthropic", "kind": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"},
    {"name": "local", "kind": "local", "api_key_env": ""},
]


def create_defaults(apps, schema_editor):
    Upstream = apps.get_model("routing", "Upstream")
    for values in DEFAULTS:
        Upstream.objects.get_or_create(name=values["name"], defaults=values)


def remove_defaults(apps, schema_editor):
    Upstream = apps.get_model("routing", "Upstream")
    Upstream.objects.filter(name__in=[d["name"] for d in DEFAULTS], deployments__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("routing", "0001_initial")]

    operations = [migrations.RunPython(create_defaults, remove_defaults)]
