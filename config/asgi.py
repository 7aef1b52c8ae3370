import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402  after setup, as get_asgi_application does

from chat.dispatch import in_process_sweep_start  # noqa: E402
from core.asgi import ASGIHandler  # noqa: E402

application = ASGIHandler()
if settings.TURNS_IN_PROCESS:
    # Turns run in this process (no broker): its sweep hands over the turns that must
    # run, those a restart cut included, as beat does on the Procfile stack.
    in_process_sweep_start()
