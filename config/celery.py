"""The Celery app. Settings come from Django settings under the CELERY_ namespace:
late acks (a task is re-run if its worker dies), JSON only, eager when no broker."""

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("parley")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def close_old_connections_around_tasks(sender=None, **kwargs) -> None:  # noqa: ANN001
    """Around each task, what Django does around each request: close the database
    connections that are broken or older than CONN_MAX_AGE, keep the others. Celery's
    own Django fixup would close them all before and after every task (see
    CELERY_DB_REUSE_MAX in config.settings), so each turn paid a new PostgreSQL
    connection. Eager tasks run inside a request and leave its connection alone."""
    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    close_old_connections()
