from io import StringIO

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_migrations_match_the_models():
    """The suite builds tables from the models (--nomigrations) for speed; this keeps
    the migrations honest. .ci/run also applies them to a fresh PostgreSQL database."""
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()
