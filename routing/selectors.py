"""Reads of the routing: the routes a call on an alias tries, in order.

An alias with deployments is served by them: lower priority first, a weighted draw
among equal priorities, and an upstream cooling down (routing.cooldown) after every
other. An alias with none is served as before upstreams existed: by the upstream
named after its price's `provider` (the defaults `openai`, `anthropic`, `local`;
made from the OPENAI_* / ANTHROPIC_* settings when no such row exists) and the
price's `provider_model`. An alias whose deployments are all inactive (or on
inactive upstreams) falls back to that route too; one whose fallback upstream is
inactive has no route, and its calls fail saying so.

The happy path costs one cache round trip per call: each process keeps the rows it
read, stamped with the routing version (bumped in the cache by every change to an
upstream or a deployment: routing.signals), and reads that version together with
the cooldowns of the routes it kept.
"""

import random
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.core.cache import cache
from django.db.models import Count, DecimalField, Q, Sum, Value
from django.db.models.functions import Coalesce

from billing.models import ModelPrice
from chat.llm import DEFAULT_HOSTS, Endpoint, default_endpoint
from chat.models import LLMCall
from config.environment import secret
from routing.cooldown import cooldown_key, cooling_from
from routing.models import Deployment, Upstream

VERSION_KEY = "routing:version"


@dataclass(frozen=True)
class Route:
    """One deployment as a call tries it."""

    endpoint: Endpoint
    provider_model: str
    max_concurrent: int | None = None
    cost_input_credits_per_mtok: Decimal | None = None
    cost_output_credits_per_mtok: Decimal | None = None
    cooling: bool = False


@dataclass(frozen=True)
class _Row:
    """A deployment as read (upstream fields included), kept between calls."""

    upstream: Upstream | None  # None: the kind's default upstream from the settings
    kind: str
    name: str
    provider_model: str
    priority: int = 0
    weight: int = 1
    cost_input: Decimal | None = None
    cost_output: Decimal | None = None


_kept: dict[tuple[str, str, str], tuple[str, list[_Row]]] = {}
_kept_lock = threading.Lock()


def endpoint_of(upstream: Upstream) -> Endpoint:
    """The upstream as the providers take it: empty fields are the kind's defaults
    (its settings), the key read from the environment variable it names."""
    default = default_endpoint(upstream.kind)
    return Endpoint(
        name=upstream.name, kind=upstream.kind, base_url=upstream.base_url or default.base_url,
        api_key=secret(upstream.api_key_env),
        timeout=upstream.timeout_seconds if upstream.timeout_seconds is not None else default.timeout,
        max_retries=upstream.max_retries if upstream.max_retries is not None else default.max_retries,
        headers=tuple(sorted((str(k), str(v)) for k, v in (upstream.headers or {}).items())),
    )  # fmt: skip


def _rows_read(price: ModelPrice) -> list[_Row]:
    deployments = list(
        Deployment.objects.filter(alias=price.alias, active=True, upstream__active=True).select_related("upstream")
    )
    if deployments:
        return [
            _Row(
                upstream=d.upstream, kind=d.upstream.kind, name=d.upstream.name, provider_model=d.provider_model,
                priority=d.priority, weight=d.weight, cost_input=d.cost_input_credits_per_mtok,
                cost_output=d.cost_output_credits_per_mtok,
            )  # fmt: skip
            for d in deployments
        ]
    upstream = Upstream.objects.filter(name=price.provider).first()
    if upstream is not None and not upstream.active:
        return []  # its default upstream was turned off: nothing serves the alias
    kind = upstream.kind if upstream is not None else price.provider
    return [_Row(upstream=upstream, kind=kind, name=price.provider, provider_model=price.provider_model)]


def _rows(price: ModelPrice) -> tuple[list[_Row], dict]:
    """The alias's rows and a cache answer holding their cooldowns."""
    key = (price.alias, price.provider, price.provider_model)
    kept = _kept.get(key)
    names = [row.name for row in kept[1]] if kept else []
    found = cache.get_many([VERSION_KEY, *(cooldown_key(name) for name in names)])
    version = found.get(VERSION_KEY)
    if kept is not None and version is not None and kept[0] == version:
        return kept[1], found
    if version is None:
        cache.add(VERSION_KEY, uuid.uuid4().hex, None)
        version = cache.get(VERSION_KEY)
    rows = _rows_read(price)
    if version is not None:
        with _kept_lock:
            _kept[key] = (version, rows)
    return rows, cache.get_many([cooldown_key(row.name) for row in rows])


def routing_changed() -> None:
    """Every process reads the routes again at its next call."""
    cache.set(VERSION_KEY, uuid.uuid4().hex, None)
    with _kept_lock:
        _kept.clear()


def _ordered(rows: list[_Row]) -> list[_Row]:
    """By priority; among equals, a weighted draw without replacement."""
    ordered: list[_Row] = []
    for priority in sorted({row.priority for row in rows}):
        group = [row for row in rows if row.priority == priority]
        while len(group) > 1:
            pick = random.choices(range(len(group)), weights=[row.weight for row in group])[0]
            ordered.append(group.pop(pick))
        ordered.extend(group)
    return ordered


def routes_for(price: ModelPrice) -> list[Route]:
    """The routes a call on `price`'s alias tries, in order (module docstring)."""
    rows, found = _rows(price)
    routes = [
        Route(
            endpoint=endpoint_of(row.upstream) if row.upstream is not None else default_endpoint(row.kind),
            provider_model=row.provider_model,
            max_concurrent=row.upstream.max_concurrent if row.upstream is not None else None,
            cost_input_credits_per_mtok=row.cost_input, cost_output_credits_per_mtok=row.cost_output,
            cooling=cooling_from(found, row.name),
        )  # fmt: skip
        for row in (_ordered(rows) if len(rows) > 1 else rows)
    ]
    return [route for route in routes if not route.cooling] + [route for route in routes if route.cooling]


def upstream_key_set(upstream: Upstream) -> bool:
    """Whether the environment variable the upstream names is set (the console shows it)."""
    return bool(secret(upstream.api_key_env))


def upstreams_all() -> list[Upstream]:
    """Every upstream row, and the kinds' defaults that have none (unsaved)."""
    rows = list(Upstream.objects.all())
    named = {row.name for row in rows}
    defaults = [
        Upstream(name=kind, kind=kind, api_key_env=DEFAULT_HOSTS.get(kind, ("", ""))[1])
        for kind in Upstream.Kind.values
        if kind not in named
    ]
    return rows + defaults


__all__ = ["Route", "endpoint_of", "routes_for", "routing_changed", "upstream_key_set", "upstreams_all"]


@dataclass(frozen=True)
class UpstreamUsage:
    """An upstream's calls since a time, as the console shows them (credits)."""

    calls: int = 0
    failures: int = 0
    charged: Decimal = Decimal("0")  # what the users were charged, every call
    # The margin is taken only over the calls whose upstream cost was recorded (a
    # deployment with cost prices; never a failed call): charged on those, less what
    # they cost us. `costed_calls` below `calls - failures`: some calls had no cost.
    costed_calls: int = 0
    costed_charged: Decimal = Decimal("0")
    upstream_cost: Decimal = Decimal("0")

    @property
    def margin(self) -> Decimal | None:
        return self.costed_charged - self.upstream_cost if self.costed_calls else None


def upstream_usage(since: datetime) -> dict[str, UpstreamUsage]:
    """Each upstream's calls since `since`, by its name (LLMCall.upstream), in one
    grouped query over the calls' created_at index. An upstream without calls is
    absent: UpstreamUsage() is its figures."""
    money = DecimalField(max_digits=28, decimal_places=8)
    zero = Value(Decimal("0"), output_field=money)
    costed = Q(upstream_cost__isnull=False)
    rows = (
        LLMCall.objects.filter(created_at__gte=since)
        .order_by()  # no Meta ordering in the GROUP BY
        .values("upstream")
        .annotate(
            calls=Count("id"),
            failures=Count("id", filter=Q(status=LLMCall.Status.FAILED)),
            charged=Coalesce(Sum("cost", output_field=money), zero),
            costed_calls=Count("id", filter=costed),
            costed_charged=Coalesce(Sum("cost", filter=costed, output_field=money), zero),
            upstream_cost=Coalesce(Sum("upstream_cost", output_field=money), zero),
        )
    )
    return {row.pop("upstream"): UpstreamUsage(**row) for row in rows}


__all__ += ["UpstreamUsage", "upstream_usage"]
