"""Mounted at /stripe/ in config/urls.py in place of djstripe.urls. The namespace and
route name are dj-stripe's, so dj-stripe's admin (creating an endpoint at Stripe)
reverses to this view."""

from django.urls import path

from billing.stripe.views import StripeWebhookView

app_name = "djstripe"

urlpatterns = [
    path("webhook/<uuid:uuid>/", StripeWebhookView.as_view(), name="djstripe_webhook_by_uuid"),
]
