"""The Celery app. Settings come from Django settings under the CELERY_ namespace:
late acks (a task is re-run if its worker dies), JSON only, eager when no broker."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("parley")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
