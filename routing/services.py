"""The writes of the routing: upstreams, the deployments of an alias, and a models
file applied whole (`manage.py models_sync`; docs/models-file.md is its manual).

A models file is the wanted state of what it names:
- it is checked whole before anything is written and applied in one transaction: a
  bad entry is an error naming the entry and its field, and nothing changes;
- applying it again changes nothing: every row is compared before it is written, so
  an unchanged price makes no new price row (a price change is a new row, the old
  one kept: billing.services) and the rows that stay keep their ids;
- what it leaves out is left alone, unless `prune`.
Keys are never stored: an upstream names the environment variable holding its key,
and a header that carries a key is refused.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, transaction

from billing.models import ModelPrice
from billing.money import format_price, to_decimal
from billing.services import PRICE_FIELDS, model_price_deactivate, model_price_set, model_price_values_clean
from core.exceptions import ApplicationError, field_error
from routing.models import Deployment, Upstream
from routing.selectors import upstreams_all

UPSTREAM_FIELDS = (
    "kind", "base_url", "api_key_env", "timeout_seconds", "max_retries", "headers", "max_concurrent", "active",
)  # fmt: skip
DEPLOYMENT_FIELDS = ("priority", "weight", "cost_input_credits_per_mtok", "cost_output_credits_per_mtok", "active")
# The upstreams routing's migration 0002 makes, named after the kinds: an alias
# without deployments is served by the one its price's `provider` names.
DEFAULT_UPSTREAMS = tuple(Upstream.Kind.values)  # the upstreams named after the kinds
# Request headers that carry a key: a key lives in the environment, never in a row.
NO_KEYS_HERE = "Keys are never stored: put the key in an environment variable and name that variable in api_key_env."

# The models file's keys (docs/models-file.md). A model's price fields are
# ModelPrice's; its provider and provider_model default to its first deployment's.
FILE_KEYS = ("upstreams", "models")
UPSTREAM_KEYS = ("name", *UPSTREAM_FIELDS)
MODEL_PRICE_KEYS = tuple(name for name in PRICE_FIELDS if name not in ("provider", "provider_model"))
MODEL_KEYS = ("alias", *MODEL_PRICE_KEYS, "provider", "provider_model", "deployments")
DEPLOYMENT_KEYS = ("upstream", "model", *DEPLOYMENT_FIELDS)
ALIAS_MAX = ModelPrice._meta.get_field("alias").max_length
PROVIDER_MODEL_MAX = Deployment._meta.get_field("provider_model").max_length


class ModelsFileError(ApplicationError):
    """A models file that cannot be applied: every problem found, each naming its
    entry and field. Nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Changes:
    """What applying a models file changed (with `dry_run`: would change). `lines`
    says each change, in the order made; `notes` what was left alone on purpose."""

    upstreams_created: list[str] = field(default_factory=list)
    upstreams_updated: list[str] = field(default_factory=list)
    upstreams_unchanged: list[str] = field(default_factory=list)
    prices_new: list[str] = field(default_factory=list)  # aliases given a new price row
    prices_unchanged: list[str] = field(default_factory=list)
    deployments_changed: list[str] = field(default_factory=list)  # aliases whose rows were made the file's
    aliases_pruned: list[str] = field(default_factory=list)
    upstreams_pruned: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return any(
            (self.upstreams_created, self.upstreams_updated, self.prices_new, self.deployments_changed,
             self.aliases_pruned, self.upstreams_pruned)
        )  # fmt: skip


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, Decimal):
        return format_price(value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _diffs(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [f"{name}: {_shown(before[name])} -> {_shown(after[name])}" for name in after if before[name] != after[name]]


def _refused(exc: ValidationError) -> ApplicationError:
    """A model validator's refusal as the project's 400, each field named."""
    if not hasattr(exc, "error_dict"):
        return ApplicationError(" ".join(exc.messages))
    message = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in exc.message_dict.items())
    return ApplicationError(message, fields=exc.message_dict)


# --- upstreams ----------------------------------------------------------------------


def _upstream_clean(upstream: Upstream) -> None:
    """The model's validators (kind, slug name, environment variable name, an http(s)
    URL, a positive timeout and limit, headers without a key). The name's uniqueness
    is the caller's: it looked the row up by name."""
    if upstream.headers is None:
        upstream.headers = {}
    try:
        upstream.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        raise _refused(exc)


def _upstream_values(upstream: Upstream) -> dict[str, Any]:
    values = {name: getattr(upstream, name) for name in UPSTREAM_FIELDS}
    values["headers"] = dict(values["headers"] or {})
    return values


def _upstream_write(*, name: str, values: dict[str, Any]) -> tuple[Upstream, str, list[str]]:
    """upstream_set, saying what it did: "created", "updated" (with the field
    changes) or "unchanged" (nothing saved)."""
    unknown = sorted(set(values) - set(UPSTREAM_FIELDS))
    if unknown:
        raise field_error(unknown[0], NO_KEYS_HERE if unknown[0] == "api_key" else "Not an upstream field.")
    current = Upstream.objects.select_for_update().filter(name=name).first()
    upstream = current if current is not None else Upstream(name=name)
    before = _upstream_values(upstream)
    for key, value in values.items():
        setattr(upstream, key, value)
    _upstream_clean(upstream)
    changes = _diffs(before, _upstream_values(upstream))
    if current is None:
        upstream.save()
        return upstream, "created", []
    if not changes:
        return current, "unchanged", []
    upstream.save()
    return upstream, "updated", changes


@transaction.atomic
def upstream_set(*, name: str, **values: Any) -> Upstream:
    """Creates the upstream `name`, or changes the fields given (UPSTREAM_FIELDS; the
    others keep theirs, a new row's are the defaults). Checked by the model's
    validators first: a bad kind or environment variable name is a 400 naming the
    field. A row with nothing to change is not saved."""
    return _upstream_write(name=name, values=values)[0]


# --- deployments ----------------------------------------------------------------------


def _deployment_clean(deployment: Deployment) -> None:
    """The model's validators (lengths, digits) and its constraints in words; the
    upstream is the caller's (it may not be saved yet)."""
    try:
        deployment.clean_fields(exclude=["upstream"])
    except ValidationError as exc:
        raise _refused(exc)
    if deployment.weight <= 0:
        raise field_error("weight", "At least 1.")
    for name in ("cost_input_credits_per_mtok", "cost_output_credits_per_mtok"):
        if getattr(deployment, name) is not None and getattr(deployment, name) < 0:
            raise field_error(name, "A cost must not be negative.")


def _deployment_values(deployment: Deployment) -> dict[str, Any]:
    return {name: getattr(deployment, name) for name in DEPLOYMENT_FIELDS}


def _deployments_write(*, alias: str, wanted: list[Deployment]) -> list[str]:
    """Makes the alias's rows exactly `wanted` (unsaved, upstreams saved): a row that
    stays keeps its id and is saved only when a field changed. What changed, one
    entry per row (empty: nothing)."""
    current = {
        (row.upstream_id, row.provider_model): row
        for row in Deployment.objects.select_for_update(of=("self",)).filter(alias=alias).select_related("upstream")
    }
    keys = {(row.upstream_id, row.provider_model) for row in wanted}
    changes = []
    # Matched by the unique constraint's key (alias, upstream, provider_model): a row is
    # kept (its id too) or deleted, never renamed into another.
    for key, row in current.items():
        if key not in keys:
            row.delete()
            changes.append(f"- {row.upstream.name} {row.provider_model}")
    for row in wanted:
        kept = current.get((row.upstream_id, row.provider_model))
        if kept is None:
            row.save()
            changes.append(f"+ {row.upstream.name} {row.provider_model} (priority {row.priority})")
            continue
        diffs = _diffs(_deployment_values(kept), _deployment_values(row))
        if diffs:
            for name in DEPLOYMENT_FIELDS:
                setattr(kept, name, getattr(row, name))
            kept.save(update_fields=list(DEPLOYMENT_FIELDS))
            changes.append(f"~ {row.upstream.name} {row.provider_model}: {', '.join(diffs)}")
    return changes


@transaction.atomic
def alias_deployments_set(*, alias: str, deployments: list[dict[str, Any]]) -> list[Deployment]:
    """Makes the alias's deployment rows exactly `deployments`: dicts of `upstream`
    (an Upstream or its name), `provider_model` and optionally DEPLOYMENT_FIELDS, in
    the order tried: priority 0, 1, 2... unless one is given. A row that stays keeps
    its id; an empty list leaves the alias to its price's route (routing.selectors)."""
    alias = alias.strip()
    if not alias:
        raise field_error("alias", "An alias is required.")
    wanted: list[Deployment] = []
    for index, entry in enumerate(deployments):
        where = f"deployments[{index}]"
        unknown = sorted(set(entry) - {"upstream", "provider_model", *DEPLOYMENT_FIELDS})
        if unknown:
            raise field_error(f"{where}.{unknown[0]}", "Not a deployment field.")
        upstream = entry.get("upstream")
        if isinstance(upstream, str):
            found = Upstream.objects.filter(name=upstream).first()
            if found is None:
                raise field_error(f"{where}.upstream", f"Unknown upstream {upstream!r}.")
            upstream = found
        if not isinstance(upstream, Upstream) or upstream.pk is None:
            raise field_error(f"{where}.upstream", "An upstream (a saved row, or its name) is required.")
        values = {"priority": index, "weight": 1, "active": True, **{k: v for k, v in entry.items() if k != "upstream"}}
        row = Deployment(alias=alias, upstream=upstream, **values)
        try:
            _deployment_clean(row)
        except ApplicationError as exc:
            raise ApplicationError(f"{where}: {exc.message}", fields={where: [exc.message]})
        if any(row.upstream_id == other.upstream_id and row.provider_model == other.provider_model for other in wanted):
            raise field_error(where, f"{upstream.name} {row.provider_model} is listed twice.")
        wanted.append(row)
    _deployments_write(alias=alias, wanted=wanted)
    return list(Deployment.objects.filter(alias=alias).select_related("upstream"))


# --- reading a models file --------------------------------------------------------------


def _decimal(value: Any) -> Decimal:
    """A number of the file as a Decimal. A float (yaml.safe_load's, json's) goes
    through str(), its shortest repr: 7.5 is Decimal("7.5"), never float arithmetic."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise ValueError
    return to_decimal(str(value) if isinstance(value, float) else value)


class _Entry:
    """One mapping of the file, read key by key; each problem is noted with its place
    ("models[2] (alias fast): deployments[1]: weight: ...")."""

    def __init__(self, where: str, value: Any, keys: tuple[str, ...], problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        self.ok = True
        self.data: dict = value if isinstance(value, dict) else {}
        if not isinstance(value, dict):
            self.note("", "must be a mapping (key: value)")
            return
        unknown = [str(key) for key in value if key not in keys]
        if "api_key" in unknown:
            unknown.remove("api_key")
            self.note("api_key", NO_KEYS_HERE)
        if unknown:
            listed = ", ".join(repr(key) for key in unknown)
            self.note("", f"unknown key{'s' if len(unknown) > 1 else ''} {listed} (known: {', '.join(keys)})")

    def note(self, key: str, message: str) -> None:
        self.ok = False
        self.problems.append(f"{self.where}: {key}: {message}" if key else f"{self.where}: {message}")

    def text(self, key: str, *, required: bool = False, max_length: int | None = None) -> str:
        value = self.data.get(key)
        if value is None or value == "":
            if required:
                self.note(key, "required")
            return ""
        if not isinstance(value, str):
            self.note(key, f"a string is required (quote it), not {value!r}")
            return ""
        value = value.strip()
        if max_length is not None and len(value) > max_length:
            self.note(key, f"at most {max_length} characters")
        return value

    def number(self, key: str, *, required: bool = False) -> Decimal | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.note(key, "required")
            return None
        try:
            return _decimal(value)
        except ValueError:
            self.note(key, f"a number is required, not {value!r}")
            return None

    def integer(self, key: str, *, minimum: int) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.note(key, f"a whole number is required, not {value!r}")
            return None
        if value < minimum:
            self.note(key, f"at least {minimum}")
            return None
        return value

    def flag(self, key: str) -> bool:
        value = self.data.get(key, True)
        if not isinstance(value, bool):
            self.note(key, f"true or false, not {value!r}")
            return True
        return value


@dataclass(frozen=True)
class _UpstreamEntry:
    where: str
    name: str
    values: dict[str, Any]  # every UPSTREAM_FIELD: what the file leaves out is the default


PLAIN_DEPLOYMENT = {
    "priority": 0, "weight": 1, "cost_input_credits_per_mtok": None, "cost_output_credits_per_mtok": None, "active": True,
}  # fmt: skip


@dataclass(frozen=True)
class _DeploymentEntry:
    where: str
    upstream: str
    provider_model: str
    values: dict[str, Any]  # every DEPLOYMENT_FIELD

    @property
    def plain(self) -> bool:
        """Only an upstream and a model, as a price's own route is."""
        return self.values == PLAIN_DEPLOYMENT


@dataclass(frozen=True)
class _ModelEntry:
    where: str
    alias: str
    prices: dict[str, Any]  # every MODEL_PRICE_KEY: what the file leaves out is the default
    provider: str  # "": the first deployment's upstream's kind
    provider_model: str  # "": the first deployment's model
    deployments: list[_DeploymentEntry]


def _list(data: dict, key: str, problems: list[str]) -> list:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{key}: must be a list")
        return []
    return value


def _upstream_read(index: int, value: Any, problems: list[str]) -> _UpstreamEntry | None:
    name = value.get("name") if isinstance(value, dict) else None
    where = f"upstreams[{index}]" + (f" (name {name})" if isinstance(name, str) and name else "")
    entry = _Entry(where, value, UPSTREAM_KEYS, problems)
    name = entry.text("name", required=True)
    values = {
        "kind": entry.text("kind", required=True),
        "base_url": entry.text("base_url"),
        "api_key_env": entry.text("api_key_env"),
        "timeout_seconds": entry.number("timeout_seconds"),
        "max_retries": entry.integer("max_retries", minimum=0),
        "headers": entry.data.get("headers") or {},
        "max_concurrent": entry.integer("max_concurrent", minimum=1),
        "active": entry.flag("active"),
    }
    if not entry.ok:
        return None
    upstream = Upstream(name=name, **values)
    try:
        _upstream_clean(upstream)
    except ApplicationError as exc:
        entry.note("", exc.message)
        return None
    return _UpstreamEntry(where, name, _upstream_values(upstream))


def _deployment_read(where: str, index: int, alias: str, value: Any, problems: list[str]) -> _DeploymentEntry | None:
    entry = _Entry(where, value, DEPLOYMENT_KEYS, problems)
    upstream = entry.text("upstream", required=True)
    provider_model = entry.text("model", required=True, max_length=PROVIDER_MODEL_MAX)
    priority = entry.integer("priority", minimum=0)
    weight = entry.integer("weight", minimum=1)
    values = {
        "priority": index if priority is None else priority,
        "weight": 1 if weight is None else weight,
        "cost_input_credits_per_mtok": entry.number("cost_input_credits_per_mtok"),
        "cost_output_credits_per_mtok": entry.number("cost_output_credits_per_mtok"),
        "active": entry.flag("active"),
    }
    if not entry.ok:
        return None
    row = Deployment(alias=alias or "-", provider_model=provider_model, **values)
    try:
        _deployment_clean(row)
    except ApplicationError as exc:
        entry.note("", exc.message.replace("provider_model:", "model:"))
        return None
    return _DeploymentEntry(where, upstream, provider_model, _deployment_values(row))


def _model_read(index: int, value: Any, problems: list[str]) -> _ModelEntry | None:
    alias = value.get("alias") if isinstance(value, dict) else None
    where = f"models[{index}]" + (f" (alias {alias})" if isinstance(alias, str) and alias else "")
    entry = _Entry(where, value, MODEL_KEYS, problems)
    alias = entry.text("alias", required=True, max_length=ALIAS_MAX)
    prices: dict[str, Any] = {}
    for name in MODEL_PRICE_KEYS:
        model_field = ModelPrice._meta.get_field(name)
        if isinstance(model_field, models.DecimalField):
            read: Any = entry.number(name, required=not model_field.null)
        elif isinstance(model_field, models.IntegerField):
            read = entry.integer(name, minimum=1)
        else:
            read = entry.text(name) or None
        prices[name] = model_field.get_default() if read is None else read
    provider = entry.text("provider")
    provider_model = entry.text("provider_model", max_length=ModelPrice._meta.get_field("provider_model").max_length)
    deployments = []
    listed = entry.data.get("deployments")
    if not isinstance(listed, list) or not listed:
        entry.note("deployments", "a list of at least one deployment ({upstream: ..., model: ...}) is required")
        listed = []
    for number, item in enumerate(listed):
        deployment = _deployment_read(f"{where}: deployments[{number}]", number, alias, item, problems)
        if deployment is None:
            entry.ok = False
            continue
        key = (deployment.upstream, deployment.provider_model)
        if any((d.upstream, d.provider_model) == key for d in deployments):
            problems.append(f"{deployment.where}: {deployment.upstream} {deployment.provider_model} is listed twice")
            entry.ok = False
        deployments.append(deployment)
    if not entry.ok:
        return None
    return _ModelEntry(where, alias, prices, provider, provider_model, deployments)


def _entries_read(data: dict, key: str, read: Callable[[int, Any, list[str]], Any], ident: str,
                  problems: list[str]) -> list:  # fmt: skip
    """The entries of the list `key`, each read by `read`; one whose `ident` field
    repeats an earlier entry's is a problem."""
    entries: list = []
    for index, value in enumerate(_list(data, key, problems)):
        entry = read(index, value, problems)
        if entry is None:
            continue
        twin = next((e for e in entries if getattr(e, ident) == getattr(entry, ident)), None)
        if twin is not None:
            problems.append(f"{entry.where}: {ident}: {getattr(entry, ident)!r} is already {twin.where}")
        entries.append(entry)
    return entries


def _file_read(data: Any, *, prune: bool) -> tuple[list[_UpstreamEntry], list[_ModelEntry]]:
    """The file's entries, each checked on its own (the database is not read)."""
    if not isinstance(data, dict):
        raise ModelsFileError(["The file must be a mapping with an `upstreams` and a `models` list."])
    problems: list[str] = []
    unknown = [str(key) for key in data if key not in FILE_KEYS]
    if unknown:
        problems.append(f"unknown top-level key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                        f"(known: {', '.join(FILE_KEYS)})")  # fmt: skip
    if prune and not all(key in data for key in FILE_KEYS):
        # Pruning by a file that lacks a list would remove every row of that kind.
        problems.append("--prune removes what the file leaves out: the file must have both `upstreams` and `models` "
                        "(an empty list to remove them all)")  # fmt: skip
    upstreams = _entries_read(data, "upstreams", _upstream_read, "name", problems)
    models_ = _entries_read(data, "models", _model_read, "alias", problems)
    if problems:
        raise ModelsFileError(problems)
    return upstreams, models_


# --- applying a models file -------------------------------------------------------------


def _prices_planned(models_: list[_ModelEntry], kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Each model's price row values, checked by the pricing rules; its provider and
    provider_model are its first deployment's upstream kind and model unless given."""
    problems: list[str] = []
    planned = []
    for model in models_:
        missing = [d for d in model.deployments if d.upstream not in kinds]
        for deployment in missing:
            problems.append(
                f"{deployment.where}: unknown upstream {deployment.upstream!r} (in neither the file's upstreams "
                f"nor the database)"
            )
        if missing:
            continue
        first = model.deployments[0]
        values = {
            "provider": model.provider or kinds[first.upstream],
            "provider_model": model.provider_model or first.provider_model,
            **model.prices,
        }
        try:
            planned.append(model_price_values_clean(values))
        except ApplicationError as exc:
            problems.append(f"{model.where}: {exc.message}")
    if problems:
        raise ModelsFileError(problems)
    return planned


def _is_price_route(
    model: _ModelEntry, price: ModelPrice | None, values: dict[str, Any], kinds: dict[str, str]
) -> bool:
    """Whether the model's deployments are only the route its price already gives it
    (one plain deployment on the default upstream of that provider, with the price's
    provider_model), before and after: then an alias without deployment rows needs
    none (so an export of such an alias syncs back to no change)."""
    if price is None or len(model.deployments) != 1:
        return False
    only = model.deployments[0]
    return (
        only.plain and only.upstream in DEFAULT_UPSTREAMS and kinds.get(only.upstream) == only.upstream
        and (price.provider, price.provider_model) == (only.upstream, only.provider_model)
        and (values["provider"], values["provider_model"]) == (only.upstream, only.provider_model)
    )  # fmt: skip


def _prune(*, upstream_names: set[str], aliases: set[str], changes: Changes) -> None:
    """Removes what the file leaves out: the aliases (price deactivated, deployment
    rows deleted), then the upstreams no deployment uses. A default upstream an
    active price names as its provider stays: it is that alias's route."""
    pruned: dict[str, list[str]] = {}
    for price in ModelPrice.objects.filter(active=True).exclude(alias__in=aliases).order_by("alias"):
        model_price_deactivate(price=price)
        pruned.setdefault(price.alias, []).append("price deactivated")
    leftover: dict[str, int] = {}
    for row in Deployment.objects.exclude(alias__in=aliases).order_by("alias", "priority", "id"):
        row.delete()  # one by one: each tells routing.signals
        leftover[row.alias] = leftover.get(row.alias, 0) + 1
    for alias, count in leftover.items():
        pruned.setdefault(alias, []).append(f"{count} deployment{'s' if count > 1 else ''} deleted")
    for alias in sorted(pruned):
        changes.aliases_pruned.append(alias)
        changes.lines.append(f"alias {alias}: pruned ({', '.join(pruned[alias])})")

    providers = set(ModelPrice.objects.filter(active=True).values_list("provider", flat=True))
    problems = []
    for upstream in Upstream.objects.exclude(name__in=upstream_names).order_by("name"):
        if upstream.name in DEFAULT_UPSTREAMS and upstream.name in providers:
            changes.notes.append(
                f"upstream {upstream.name}: kept, though not in the file: an active price names it as its provider "
                f"(the route of an alias without deployments)"
            )
            continue
        used = sorted(set(upstream.deployments.values_list("alias", flat=True)))
        if used:
            problems.append(
                f"upstreams: {upstream.name!r} is not in the file, so --prune would delete it, but deployments use "
                f"it (alias {', '.join(used)}): add it to the file or move those deployments"
            )
            continue
        upstream.delete()
        changes.upstreams_pruned.append(upstream.name)
        changes.lines.append(f"upstream {upstream.name}: deleted (pruned)")
    if problems:
        raise ModelsFileError(problems)


def models_file_apply(data: dict[str, Any], *, prune: bool = False, dry_run: bool = False) -> Changes:
    """Applies a parsed models file (docs/models-file.md) in one transaction, all or
    nothing, and says what changed. A second run of the same file changes nothing.
    `dry_run` makes every change, reports it, and rolls it all back. Raises
    ModelsFileError (every problem, each naming its entry and field) or the
    ApplicationError of a refused row; nothing is then written."""
    file_upstreams, file_models = _file_read(data, prune=prune)
    changes = Changes(dry_run=dry_run)
    with transaction.atomic():
        # The database's rows, the kinds' defaults that have none (unsaved), the file's.
        known = {upstream.name: upstream for upstream in upstreams_all()}
        kinds = {name: upstream.kind for name, upstream in known.items()}
        kinds.update({entry.name: entry.values["kind"] for entry in file_upstreams})
        prices = _prices_planned(file_models, kinds)

        for entry in file_upstreams:
            upstream, action, diffs = _upstream_write(name=entry.name, values=entry.values)
            known[entry.name] = upstream
            getattr(changes, f"upstreams_{action}").append(entry.name)
            if action != "unchanged":
                changes.lines.append(f"upstream {entry.name}: {action}" + (f" ({', '.join(diffs)})" if diffs else ""))

        def saved(name: str) -> Upstream:
            # A kind's default upstream without a row gets one, as routing's migration makes it.
            if known[name].pk is None:
                known[name], _, _ = _upstream_write(name=name, values=_upstream_values(known[name]))
                changes.upstreams_created.append(name)
                changes.lines.append(f"upstream {name}: created (the {name} kind's default)")
            return known[name]

        for model, values in zip(file_models, prices, strict=True):
            current = ModelPrice.objects.filter(alias=model.alias, active=True).first()
            if current is None:
                model_price_set(alias=model.alias, **values)
                changes.prices_new.append(model.alias)
                changes.lines.append(f"price {model.alias}: created")
            else:
                diffs = _diffs({name: getattr(current, name) for name in PRICE_FIELDS}, values)
                if diffs:
                    model_price_set(alias=model.alias, **values)
                    changes.prices_new.append(model.alias)
                    changes.lines.append(
                        f"price {model.alias}: a new row ({', '.join(diffs)}); the old row kept, inactive"
                    )
                else:
                    changes.prices_unchanged.append(model.alias)
            rows = Deployment.objects.filter(alias=model.alias)
            if _is_price_route(model, current, values, kinds) and not rows.exists():
                continue
            wanted = [
                Deployment(alias=model.alias, upstream=saved(d.upstream), provider_model=d.provider_model, **d.values)
                for d in model.deployments
            ]
            diffs = _deployments_write(alias=model.alias, wanted=wanted)
            if diffs:
                changes.deployments_changed.append(model.alias)
                changes.lines.append(f"deployments {model.alias}: {'; '.join(diffs)}")

        if prune:
            _prune(
                upstream_names={entry.name for entry in file_upstreams},
                aliases={model.alias for model in file_models}, changes=changes,
            )  # fmt: skip
        if dry_run:
            transaction.set_rollback(True)
    return changes


__all__ = [
    "Changes",
    "ModelsFileError",
    "alias_deployments_set",
    "models_file_apply",
    "upstream_set",
]
