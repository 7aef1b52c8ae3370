import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)

from core.asgi import ASGIHandler  # noqa: E402  Django is set up first, as get_asgi_application does

application = ASGIHandler()
