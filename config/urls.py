from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core.metrics import metrics
from core.views import home

api_v1 = [
    path("", include("core.urls")),
    path("", include("accounts.urls")),
    path("", include("billing.urls")),
    path("", include("billing.stripe.urls")),
    path("", include("chat.api.urls")),
    path("", include("reporting.urls")),
    path("", include("notifications.urls")),
    path("", include("organizations.urls")),
]

urlpatterns = [
    path("", home, name="home"),
    path("api/v1/", include(api_v1)),
    # The OpenAI-compatible endpoint: base URL /v1 for any OpenAI client.
    path("v1/", include("openai_api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("admin/", admin.site.urls),
    path("stripe/", include("billing.stripe.webhook_urls", namespace="djstripe")),
    # Prometheus's scrape (404 unless METRICS_TOKEN is set): docs/metrics.md.
    path("metrics", metrics, name="metrics"),
]

if settings.BENCH_ENDPOINTS:
    # Baselines for bench/: never enabled in production.
    urlpatterns.append(path("bench/", include("bench.urls")))

handler404 = "core.views.not_found"
handler500 = "core.views.server_error"
