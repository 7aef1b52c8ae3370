from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.models import ModelPrice
from billing.money import format_price
from routing.models import Deployment, Upstream
from routing.services import DEPLOYMENT_FIELDS, MODEL_PRICE_KEYS, PLAIN_DEPLOYMENT, UPSTREAM_FIELDS

REQUIRED_PRICES = ("input_credits_per_mtok", "output_credits_per_mtok")


class _Flow(dict):
    """A mapping written on one line ({upstream: primary, model: gpt-4o-mini})."""


class _Dumper(yaml.SafeDumper):
    """Decimals as the plain numbers they are, never through a float: 7.5, 0.15,
    1500 (a price row's Decimal("7.50000000") normalized). A list is indented under
    its key, as people write it (PyYAML's default puts its dashes at the key's column)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _decimal(dumper: _Dumper, value: Decimal) -> yaml.ScalarNode:
    text = format_price(value)
    return dumper.represent_scalar("tag:yaml.org,2002:float" if "." in text else "tag:yaml.org,2002:int", text)


_Dumper.add_representer(Decimal, _decimal)
_Dumper.add_representer(_Flow, lambda dumper, value: dumper.represent_mapping("tag:yaml.org,2002:map", value, True))


def _default(model: type, name: str) -> Any:
    return model._meta.get_field(name).get_default()


def _upstream_entry(upstream: Upstream) -> dict[str, Any]:
    entry = _Flow(name=upstream.name, kind=upstream.kind)
    for name in UPSTREAM_FIELDS[1:]:
        value = getattr(upstream, name)
        if value != _default(Upstream, name):
            # A whole number of seconds reads better as 30 than 30.0 (a float field).
            entry[name] = int(value) if isinstance(value, float) and value.is_integer() else value
    return entry


def _deployment_entry(index: int, deployment: Deployment) -> dict[str, Any]:
    entry = _Flow(upstream=deployment.upstream.name, model=deployment.provider_model)
    defaults = {**PLAIN_DEPLOYMENT, "priority": index}  # the file's order is the priority
    for name in DEPLOYMENT_FIELDS:
        if getattr(deployment, name) != defaults[name]:
            entry[name] = getattr(deployment, name)
    return entry


def _model_entry(price: ModelPrice, deployments: list[Deployment], upstreams: dict[str, Upstream]) -> dict[str, Any]:
    entry: dict[str, Any] = {"alias": price.alias}
    for name in MODEL_PRICE_KEYS:
        value = getattr(price, name)
        if name in REQUIRED_PRICES or (value is not None and value != _default(ModelPrice, name)):
            entry[name] = value
    if deployments:
        first_kind, first_model = deployments[0].upstream.kind, deployments[0].provider_model
        entry_deployments = [_deployment_entry(index, row) for index, row in enumerate(deployments)]
    else:
        # The route its price gives it: the upstream named after its provider.
        named = upstreams.get(price.provider)
        first_kind, first_model = (named.kind if named else price.provider), price.provider_model
        entry_deployments = [_Flow(upstream=price.provider, model=price.provider_model)]
    # The fallback route defaults to the first deployment's; written only when it is not.
    if price.provider != first_kind:
        entry["provider"] = price.provider
    if price.provider_model != first_model:
        entry["provider_model"] = price.provider_model
    entry["deployments"] = entry_deployments
    return entry


def models_file_data() -> dict[str, Any]:
    """Today's upstreams and active prices as a models file (docs/models-file.md):
    fields at their default are left out; an alias without deployments gets the one
    its price routes to. Deployments of an alias without an active price are not in
    it (models_sync --prune would delete them)."""
    upstreams = {upstream.name: upstream for upstream in Upstream.objects.order_by("name")}
    deployments: dict[str, list[Deployment]] = defaultdict(list)
    for row in Deployment.objects.select_related("upstream").order_by("alias", "priority", "id"):
        deployments[row.alias].append(row)
    return {
        "upstreams": [_upstream_entry(upstream) for upstream in upstreams.values()],
        "models": [
            _model_entry(price, deployments.get(price.alias, []), upstreams)
            for price in ModelPrice.objects.filter(active=True).order_by("alias")
        ],
    }


def models_file_dump(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


class Command(BaseCommand):
    help = (
        "Write today's upstreams, active prices and deployments as a models file (docs/models-file.md), to "
        "stdout or --output FILE. `manage.py models_sync` of it changes nothing."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--output", metavar="FILE", help="Write to FILE instead of stdout.")

    def handle(self, *args, output: str | None, **options) -> None:
        data = models_file_data()
        text = (
            f"# Parley's models, exported {timezone.now():%Y-%m-%d %H:%M} UTC by manage.py models_export.\n"
            "# manage.py models_sync FILE applies it (docs/models-file.md).\n" + models_file_dump(data)
        )
        if not output:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"{output}: cannot be written: {exc}")
        self.stdout.write(f"{output}: {len(data['upstreams'])} upstreams, {len(data['models'])} models.")
