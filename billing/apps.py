from typing import Any

from django.apps import AppConfig
from django.db import connections
from django.db.migrations.loader import MigrationLoader
from django.db.models.signals import post_migrate


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        # Configures the Stripe client and keeps dj-stripe from storing API keys
        # (billing/stripe/client.py) in every process, whatever it imports first.
        from billing.stripe import client  # noqa: F401

        post_migrate.connect(_ledger_triggers_install, sender=self)


def _ledger_triggers_install(*, app_config: AppConfig, using: str, **kwargs: Any) -> None:
    """The ledger's triggers (Meta.triggers of billing's models: django-pgtrigger) are
    installed by billing's migrations (0007). Where billing's tables were built from the
    models instead, with its migrations turned off (the test suite's --nomigrations),
    they are installed here, after that `migrate`, so that the tests run against the
    database as it defends the ledger in production. (pgtrigger's own
    PGTRIGGER_INSTALL_ON_MIGRATE would reinstall every app's triggers after every
    migrate; this is billing's only, and only then.) PostgreSQL only: other databases
    have no triggers."""
    if connections[using].vendor != "postgresql" or MigrationLoader.migrations_module(app_config.label)[0]:
        return
    # Imported here, not at the top: this module is imported while the app registry is
    # still being filled (pgtrigger's models code needs it ready).
    import pgtrigger

    # post_migrate also follows every flush (a transactional test's teardown, which
    # keeps the triggers): one look per trigger, and only a missing or changed one is
    # (re)installed.
    uris = [
        f"{model._meta.label}:{trigger.name}"
        for model in app_config.get_models()
        for trigger in getattr(model._meta, "triggers", ())
        if trigger.get_installation_status(model, database=using)[0] != "INSTALLED"
    ]
    if uris:
        pgtrigger.install(*uris, database=using)
