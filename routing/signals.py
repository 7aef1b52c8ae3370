"""Any change to an upstream or a deployment (console, models_sync, a script) makes
every process read the routes again at its next call (routing.selectors)."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from routing.models import Deployment, Upstream
from routing.selectors import routing_changed


@receiver([post_save, post_delete], sender=Upstream)
@receiver([post_save, post_delete], sender=Deployment)
def routing_rows_changed(**kwargs: object) -> None:
    # Now (this process, and a test's transaction that never commits) and again after
    # commit: a process reading in between would otherwise keep the old rows.
    routing_changed()
    transaction.on_commit(routing_changed)
