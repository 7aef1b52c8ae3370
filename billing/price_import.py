"""Prices from LiteLLM's community price map (`model_prices_and_context_window.json`,
one JSON object keyed by model). The operator downloads the file; nothing is fetched
here. `manage.py import_prices` is the command; every write goes through
billing.services (model_price_create / model_price_change), all in one transaction.

Which rows: an active row whose alias is a map key takes that entry; otherwise one
whose provider_model is the key without LiteLLM's provider prefix ("openrouter/",
"deepseek/": the entry's own `litellm_provider` followed by "/") and whose provider
is the one that entry maps to (below). With `only`, just those keys are read, and a
key with no active row of that alias gets a new row (alias = the key). Without
`only`, no row is created.

What is read from an entry (USD per token, as credits per million tokens:
cost * 1e6 * CREDITS_PER_USD * (1 + markup/100), rounded UP at the 8th place by
billing.money.credits_per_mtok_from_usd):

- `input_cost_per_token`, `output_cost_per_token`: required; an entry without them
  is skipped with a note.
- `cache_read_input_token_cost` -> cached input, `cache_creation_input_token_cost`
  -> cache write (Anthropic's 5-minute write; `..._above_1hr` is not read); absent:
  empty (the input price).
- `input_cost_per_token_above_<N>k_tokens`, `output_cost_per_token_above_<N>k_tokens`
  -> the long-context tier with threshold N*1000 (a side the map leaves out keeps
  its base price in the tier); no such keys: no tier. An entry with several N is
  skipped with a note (a row has one tier). The map's tiered cache prices
  (`cache_read_input_token_cost_above_200k_tokens`, ...) have no field here:
  past the tier, billing.pricing raises the cache prices in the proportion the
  tier raises input (which is how those map entries run, 2x for Anthropic).
- `max_input_tokens` -> context_tokens (the model's context window),
  `max_output_tokens` -> max_output_tokens; absent: the row keeps its own (a new
  row: the model's defaults). `max_tokens` is not read: LiteLLM calls it legacy,
  the output limit for some entries and the input limit for others.
- `mode`: "chat" entries are priced as chat models, "embedding" entries as
  embedding models (kind embedding: /v1/embeddings; an output price the map leaves
  out is 0); others are skipped with a note.
- `litellm_provider`: see PROVIDERS. It chooses the provider of a new row and of a
  provider_model match; an alias match takes the entry whatever its provider.
- counting: the OpenAI encoding for OpenAI's model families (by the model's name),
  else the row keeps its own (a new row: bytes).
"""

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.db import transaction

from billing.models import ModelPrice
from billing.money import credits_per_mtok_from_usd, to_decimal
from billing.services import PRICE_FIELDS, TIER_FIELDS, model_price_change, model_price_create

# LiteLLM's provider -> ours. The OpenAI-compatible hosts are called through the
# `openai` provider (OPENAI_BASE_URL pointed at the host, provider_model the host's
# model name). Others (bedrock, vertex_ai, azure, gemini, cohere, ...) speak their
# own APIs: their entries price rows matched by alias only, and create none.
OPENAI_COMPATIBLE = (
    "cerebras", "deepinfra", "deepseek", "fireworks_ai", "groq", "mistral", "openrouter", "perplexity",
    "together_ai", "xai",
)  # fmt: skip
PROVIDERS = {
    "openai": ModelPrice.Provider.OPENAI,
    "anthropic": ModelPrice.Provider.ANTHROPIC,
    **{name: ModelPrice.Provider.OPENAI for name in OPENAI_COMPATIBLE},
}

# OpenAI's model families by name (the last part of the key: "openrouter/openai/o3-mini"
# is o3-mini). o200k_base first: "gpt-4o" and "gpt-4.1" also start with "gpt-4".
# gpt-oss uses o200k_harmony, o200k_base with more special tokens: the same text tokens.
O200K_NAMES = re.compile(r"^(gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|o\d+(-|$))")
CL100K_NAMES = re.compile(r"^(gpt-4|gpt-3\.5-turbo|text-embedding-3|text-embedding-ada-002)")

# The map's modes priced here, and the kind of row each becomes.
MODES = {"chat": ModelPrice.Kind.CHAT, "embedding": ModelPrice.Kind.EMBEDDING}
TIER_KEY = re.compile(r"^(input|output)_cost_per_token_above_(\d+)k_tokens$")
PRICE_KEYS = {
    "input_credits_per_mtok": "input_cost_per_token",
    "output_credits_per_mtok": "output_cost_per_token",
    "cached_input_credits_per_mtok": "cache_read_input_token_cost",
    "cache_write_credits_per_mtok": "cache_creation_input_token_cost",
}
TOKEN_KEYS = {"context_tokens": "max_input_tokens", "max_output_tokens": "max_output_tokens"}
ALIAS_MAX = ModelPrice._meta.get_field("alias").max_length
PROVIDER_MODEL_MAX = ModelPrice._meta.get_field("provider_model").max_length


class PriceImportError(ValueError):
    """The file or the arguments are wrong; nothing was written."""


@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any


@dataclass
class PriceUpdate:
    """One row's new price: `current` is the active row (None: a new row), `values`
    every field of the new price, `changes` what differs (empty: left alone)."""

    alias: str
    key: str
    current: ModelPrice | None
    values: dict[str, Any]
    changes: list[Change]


@dataclass
class ImportPlan:
    updates: list[PriceUpdate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def created(self) -> list[PriceUpdate]:
        return [update for update in self.updates if update.current is None]

    @property
    def changed(self) -> list[PriceUpdate]:
        return [update for update in self.updates if update.current is not None and update.changes]

    @property
    def unchanged(self) -> list[PriceUpdate]:
        return [update for update in self.updates if update.current is not None and not update.changes]


# --- reading the file -------------------------------------------------------------


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def price_map_parse(text: str, *, source: str = "the file") -> dict[str, Any]:
    """The map from its JSON text. Numbers are read as Decimal (never a float), so
    "2.5e-06" is exactly 0.0000025."""
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except ValueError as exc:
        raise PriceImportError(f"{source} is not JSON: {exc}.")
    if not isinstance(data, dict):
        raise PriceImportError(
            f"{source} is JSON but not an object keyed by model (LiteLLM's price map is one); "
            f"it is a {type(data).__name__}."
        )
    return data


def price_map_read(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceImportError(f"Cannot read {path}: {exc}.")
    return price_map_parse(text, source=str(path))


# --- one entry --------------------------------------------------------------------


def provider_for(entry: dict[str, Any]) -> str | None:
    """Our provider for a LiteLLM entry, or None when Parley cannot call its host."""
    return PROVIDERS.get(str(entry.get("litellm_provider", "")))


def provider_model_for(key: str, entry: dict[str, Any]) -> str:
    """The model name the provider is called with: the key less its provider prefix."""
    prefix = f"{entry.get('litellm_provider', '')}/"
    return key[len(prefix) :] if len(prefix) > 1 and key.startswith(prefix) else key


def counting_for(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1].lower()
    if O200K_NAMES.match(base):
        return ModelPrice.Counting.O200K_BASE
    if CL100K_NAMES.match(base):
        return ModelPrice.Counting.CL100K_BASE
    return None


def _usd(key: str, name: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise PriceImportError(f"{key}: {name} is not a number ({value!r}).")
    amount = to_decimal(value)
    if amount < 0:
        raise PriceImportError(f"{key}: {name} is negative ({value}); a price must not be.")
    return amount


def _tokens(key: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PriceImportError(f"{key}: {name} is not a positive whole number of tokens ({value!r}).")
    return value


def entry_values(key: str, entry: Any, *, factor: Decimal) -> dict[str, Any] | str:
    """The price fields an entry sets (a field it leaves out is not in the dict), or
    why it is skipped. A malformed price or token count is a PriceImportError."""
    if not isinstance(entry, dict):
        return "not an object"
    mode = entry.get("mode")
    if mode not in MODES:
        return f"mode is {mode!r}; only chat and embedding entries are priced"
    needed = ("input_cost_per_token", "output_cost_per_token") if mode == "chat" else ("input_cost_per_token",)
    missing = [name for name in needed if entry.get(name) is None]
    if missing:
        return f"no {' or '.join(missing)}"
    values: dict[str, Any] = {"kind": MODES[mode]}
    for target, name in PRICE_KEYS.items():
        usd = entry.get(name)
        values[target] = None if usd is None else credits_per_mtok_from_usd(_usd(key, name, usd), factor=factor)
    if values["output_credits_per_mtok"] is None:  # an embedding model produces no output tokens
        values["output_credits_per_mtok"] = Decimal(0)
    tiers: dict[int, dict[str, Decimal]] = {}
    for name, usd in entry.items():
        found = TIER_KEY.match(name)
        if found:
            tiers.setdefault(int(found[2]) * 1000, {})[found[1]] = _usd(key, name, usd)
    if len(tiers) > 1:
        sizes = ", ".join(f"{threshold // 1000}k" for threshold in sorted(tiers))
        return f"several long-context tiers ({sizes}); a price row has one"
    values.update(dict.fromkeys(TIER_FIELDS))  # no tier in the map: none on the row
    for threshold, sides in tiers.items():
        values["tier_threshold_tokens"] = threshold
        for side in ("input", "output"):
            # A side the map leaves out costs in the tier what it costs below it.
            usd = sides.get(side)
            base = values[f"{side}_credits_per_mtok"]
            values[f"tier_{side}_credits_per_mtok"] = (
                base if usd is None else credits_per_mtok_from_usd(usd, factor=factor)
            )
    for target, name in TOKEN_KEYS.items():
        if entry.get(name) is not None:
            values[target] = _tokens(key, name, entry[name])
    counting = counting_for(provider_model_for(key, entry))
    if counting is not None:
        values["counting"] = counting
    return values


# --- the plan and its writes ------------------------------------------------------


def markup_factor(markup: Decimal | int | str) -> Decimal:
    try:
        percent = to_decimal(markup)
    except (TypeError, ValueError):
        raise PriceImportError(f"--markup must be a number of percent, not {markup!r}.")
    # A negative markup sells below the provider's price: refused, as a typo is likelier.
    if percent < 0:
        raise PriceImportError(f"--markup must not be negative ({markup}): prices would fall below the provider's.")
    return 1 + percent / 100


def _defaults() -> dict[str, Any]:
    return {name: ModelPrice._meta.get_field(name).get_default() for name in PRICE_FIELDS}


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    return [Change(name, old.get(name), new[name]) for name in PRICE_FIELDS if old.get(name) != new[name]]


def _key_for(price: ModelPrice, keys: Iterable[str], by_model: dict[tuple[str, str], list[str]]) -> str | list[str]:
    """The map key a row takes, or the candidates when several fit equally."""
    if price.alias in keys:
        return price.alias
    candidates = by_model.get((price.provider, price.provider_model), [])
    if len(candidates) > 1 and price.provider_model in candidates:
        return price.provider_model
    return candidates[0] if len(candidates) == 1 else candidates


def price_import_plan(*, price_map: dict[str, Any], only: Iterable[str] = (), markup: Decimal | int | str = 0,
                      lock: bool = False) -> ImportPlan:  # fmt: skip
    """What importing `price_map` would create and change, written nowhere. `lock`
    takes the active rows FOR UPDATE (inside the caller's transaction)."""
    if not isinstance(price_map, dict):
        raise PriceImportError("The price map must be a JSON object keyed by model.")
    factor = markup_factor(markup)
    only = list(dict.fromkeys(only))
    missing = [key for key in only if key not in price_map]
    if missing:
        raise PriceImportError(f"Not in the price map: {', '.join(missing)}.")
    keys = set(only) if only else set(price_map)
    by_model: dict[tuple[str, str], list[str]] = {}
    for key in sorted(keys):
        entry = price_map[key]
        if isinstance(entry, dict) and provider_for(entry) is not None:
            by_model.setdefault((provider_for(entry), provider_model_for(key, entry)), []).append(key)

    plan = ImportPlan()
    rows = ModelPrice.objects.filter(active=True).order_by("alias")
    if lock:
        rows = rows.select_for_update()
    aliases = set()
    for price in rows:
        aliases.add(price.alias)
        key = _key_for(price, keys, by_model)
        if isinstance(key, list):
            if key:
                plan.notes.append(
                    f"{price.alias}: left alone: its provider_model {price.provider_model!r} fits several entries "
                    f"({', '.join(key)}); name the alias after one of them."
                )
            continue
        values = entry_values(key, price_map[key], factor=factor)
        if isinstance(values, str):
            plan.notes.append(f"{price.alias}: left alone: entry {key!r} skipped: {values}.")
            continue
        current = {name: getattr(price, name) for name in PRICE_FIELDS}
        new = {**current, **values}
        plan.updates.append(PriceUpdate(price.alias, key, price, new, _diff(current, new)))

    for key in only:
        if key in aliases:
            continue
        entry = price_map[key]
        values = entry_values(key, entry, factor=factor)
        if isinstance(values, str):
            plan.notes.append(f"{key}: not created: {values}.")
            continue
        provider = provider_for(entry)
        if provider is None:
            plan.notes.append(
                f"{key}: not created: LiteLLM provider {entry.get('litellm_provider')!r} is not one Parley calls "
                f"(openai, anthropic, or an OpenAI-compatible host: {', '.join(OPENAI_COMPATIBLE)})."
            )
            continue
        if len(key) > ALIAS_MAX:
            raise PriceImportError(f"{key}: too long for an alias (at most {ALIAS_MAX} characters).")
        provider_model = provider_model_for(key, entry)
        if len(provider_model) > PROVIDER_MODEL_MAX:
            raise PriceImportError(f"{key}: too long for a provider model (at most {PROVIDER_MODEL_MAX} characters).")
        new = {**_defaults(), "provider": provider, "provider_model": provider_model, **values}
        plan.updates.append(PriceUpdate(key, key, None, new, _diff({}, new)))
    return plan


def price_import_apply(*, plan: ImportPlan) -> list[ModelPrice]:
    """Writes the plan's new and changed rows through billing.services (a change is a
    new row, the old one deactivated). Run it inside the transaction that planned it."""
    written = []
    for update in plan.updates:
        if update.current is None:
            written.append(model_price_create(alias=update.alias, **update.values))
        elif update.changes:
            changes = {change.field: change.new for change in update.changes}
            written.append(model_price_change(price=update.current, **changes))
    return written


def price_map_import(*, price_map: dict[str, Any], only: Iterable[str] = (), markup: Decimal | int | str = 0,
                     dry_run: bool = False) -> ImportPlan:  # fmt: skip
    """Plans the import and, unless `dry_run`, writes it in one transaction (all or
    nothing: a refused price rolls every row back)."""
    with transaction.atomic():
        plan = price_import_plan(price_map=price_map, only=only, markup=markup, lock=not dry_run)
        if not dry_run:
            price_import_apply(plan=plan)
    return plan
