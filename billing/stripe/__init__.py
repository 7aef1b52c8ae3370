"""Stripe, in one package: prepaid top-ups and the webhooks that settle them.

- client.py: the configured `stripe` library and every call that writes at Stripe
  (never inside a database transaction).
- services.py: creating a top-up; recording, processing and applying webhook events
  (credits move only through billing.services, keyed by Stripe ids).
- selectors.py, api.py (top-up endpoints), views.py (the webhook endpoint),
  urls.py, webhook_urls.py (dj-stripe's namespace), admin.py, tasks.py.

`import stripe` inside this package is an absolute import and reaches the library.
"""
