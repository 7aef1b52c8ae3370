"""`GET /metrics`: Prometheus's scrape, in its text format (docs/metrics.md).

A plain Django view on the web's own port rather than prometheus-client's HTTP
server: the web already listens, behind the same TLS and proxy, and the scrape is
guarded by METRICS_TOKEN (a bearer token, compared in constant time; without the
setting the URL does not exist: 404).

It exports the metric objects the code counts with (chat.metrics, billing.metrics)
and, read when scraped from the database and the cache that every process shares,
the queued turns and each upstream's cooldown. The Procfile's processes (gunicorn's
web workers, the Celery worker) run prometheus-client in its multiprocess mode
(bin/with-metrics): each writes its values to files in PROMETHEUS_MULTIPROC_DIR and
a scrape sums those files, whichever web worker answers it. Without the setting
(bin/serve: one process) this process's own registry is served.
"""

import hmac
import logging
from collections.abc import Iterator

from django.conf import settings
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

import billing.metrics  # noqa: F401  imported for its metrics, which register when it loads
import chat.metrics  # noqa: F401  the same
from chat.models import Turn
from routing import cooldown
from routing.selectors import upstreams_all

logger = logging.getLogger(__name__)


def process_metrics() -> Collector:
    """The metric objects' values: every process's, summed from the multiprocess
    directory, or this process's alone without one."""
    if settings.PROMETHEUS_MULTIPROC_DIR:
        return MultiProcessCollector(None, path=settings.PROMETHEUS_MULTIPROC_DIR)
    return REGISTRY


def scrape_time_metrics() -> Iterator[Metric]:
    """What is read at each scrape: turns waiting for a worker, and each upstream's
    cooldown (routing.cooldown; 0 and 0 when not cooling). Left out, with a log line,
    when the database does not answer: the rest of the scrape is what shows why."""
    try:
        queued = Turn.objects.filter(status=Turn.Status.QUEUED).count()
        names = [upstream.name for upstream in upstreams_all()]
    except DatabaseError as exc:
        logger.warning("metrics: queued turns and cooldowns left out (%s)", exc.__class__.__name__)
        return
    yield GaugeMetricFamily("parley_turns_queued", "Turns accepted and not yet started by a worker.", value=queued)
    cooling = GaugeMetricFamily(
        "parley_upstream_cooling", "1 while the upstream cools down, else 0.", labels=["upstream"]
    )
    until = GaugeMetricFamily(
        "parley_upstream_cooling_until_seconds", "When the upstream's cooldown ends (Unix time); 0 when not cooling.",
        labels=["upstream"],
    )  # fmt: skip
    for name, state in cooldown.states(names).items():
        cooling.add_metric([name], 1 if state.cooling else 0)
        until.add_metric([name], state.cooling_until if state.cooling else 0)
    yield cooling
    yield until


class Scrape:
    """One scrape's metrics, as a prometheus-client collector."""

    def collect(self) -> Iterator[Metric]:
        yield from process_metrics().collect()
        yield from scrape_time_metrics()


def _authorized(request: HttpRequest) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.METRICS_TOKEN.encode())


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus's text format (OpenMetrics when the scraper's Accept asks for it)."""
    if not settings.METRICS_TOKEN:
        raise Http404
    if not _authorized(request):
        response = HttpResponse(
            "Send Authorization: Bearer <METRICS_TOKEN>.\n", status=401, content_type="text/plain; charset=utf-8"
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(Scrape()), content_type=content_type)
