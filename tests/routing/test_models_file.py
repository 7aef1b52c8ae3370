"""The models file: manage.py models_sync (applied whole or not at all, a second run
changes nothing, --prune, --dry-run), manage.py models_export (its file syncs back to
no change), the services under them, and the example in docs/."""

import textwrap
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from billing.models import ModelPrice
from billing.services import model_price_create
from core.exceptions import ApplicationError
from routing.management.commands.models_sync import models_file_load
from routing.models import Deployment, Upstream
from routing.services import alias_deployments_set, models_file_apply, upstream_set

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "models.example.yaml"
SECRET = "sk-proj-RECOGNISABLE-SECRET-4242"

BRIEF = """
upstreams:
  - {name: primary, kind: openai, base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY}
  - {name: backup, kind: openai, base_url: "https://openrouter.ai/api/v1", api_key_env: OPENROUTER_KEY,
     timeout_seconds: 30, max_concurrent: 20, headers: {X-Title: Parley}}
models:
  - alias: fast
    input_credits_per_mtok: 15
    output_credits_per_mtok: 60
    cached_input_credits_per_mtok: 7.5
    context_tokens: 128000
    max_output_tokens: 4096
    deployments:
      - {upstream: primary, model: gpt-4o-mini}
      - {upstream: backup, model: openai/gpt-4o-mini, cost_input_credits_per_mtok: 12, cost_output_credits_per_mtok: 48}
  - alias: cheap
    input_credits_per_mtok: 0.15
    output_credits_per_mtok: 0.6
    counting: o200k_base
    deployments:
      - {upstream: backup, model: openai/gpt-4.1-nano}
"""


def write(tmp_path: Path, text: str, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def sync(path: Path, *args: str) -> str:
    out = StringIO()
    call_command("models_sync", str(path), *args, stdout=out)
    return out.getvalue()


def export(tmp_path: Path) -> Path:
    path = tmp_path / "exported.yaml"
    call_command("models_export", "--output", str(path), stdout=StringIO())
    return path


def state() -> dict[str, list]:
    """Every routing and price row with its id (and an upstream's updated_at: a save
    with nothing changed would still move it)."""
    return {
        "upstreams": list(Upstream.objects.order_by("id").values_list()),
        "prices": list(ModelPrice.objects.order_by("id").values_list()),
        "deployments": list(Deployment.objects.order_by("id").values_list()),
    }


def active(alias: str) -> ModelPrice:
    return ModelPrice.objects.get(alias=alias, active=True)


def routes(alias: str) -> list[tuple]:
    return list(
        Deployment.objects.filter(alias=alias)
        .order_by("priority", "id")
        .values_list("upstream__name", "provider_model", "priority", "weight", "cost_input_credits_per_mtok")
    )


# --- applying a file, and again ------------------------------------------------------


def test_a_file_makes_its_upstreams_prices_and_deployments(tmp_path):
    out = sync(write(tmp_path, BRIEF))

    primary, backup = Upstream.objects.get(name="primary"), Upstream.objects.get(name="backup")
    assert (primary.kind, primary.base_url, primary.api_key_env) == (
        "openai",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
    )
    assert (backup.timeout_seconds, backup.max_concurrent, backup.headers) == (30.0, 20, {"X-Title": "Parley"})
    assert (primary.timeout_seconds, primary.max_retries, primary.max_concurrent, primary.headers) == (
        None,
        None,
        None,
        {},
    )
    fast = active("fast")
    assert (fast.provider, fast.provider_model) == ("openai", "gpt-4o-mini")  # the first deployment's kind and model
    assert (fast.input_credits_per_mtok, fast.output_credits_per_mtok) == (Decimal("15"), Decimal("60"))
    assert fast.cached_input_credits_per_mtok == Decimal("7.5")
    assert (fast.context_tokens, fast.max_output_tokens, fast.counting) == (128000, 4096, "bytes")
    assert routes("fast") == [
        ("primary", "gpt-4o-mini", 0, 1, None),
        ("backup", "openai/gpt-4o-mini", 1, 1, Decimal("12")),
    ]
    cheap = active("cheap")
    assert (cheap.input_credits_per_mtok, cheap.output_credits_per_mtok) == (Decimal("0.15"), Decimal("0.6"))
    assert (cheap.counting, cheap.context_tokens, cheap.max_output_tokens) == ("o200k_base", 8192, 1024)
    assert "upstream primary: created" in out and "price fast: created" in out
    assert "upstreams: 2 created, 0 updated, 0 unchanged; prices: 2 new rows, 0 unchanged" in out


def test_a_second_run_of_the_same_file_changes_nothing(tmp_path):
    path = write(tmp_path, BRIEF)
    sync(path)
    before = state()

    out = sync(path)

    assert state() == before  # same rows, same ids, nothing saved again
    assert out.strip() == (
        "Nothing to change (upstreams: 0 created, 0 updated, 2 unchanged; prices: 0 new rows, 2 unchanged; "
        "deployments: 0 aliases changed)."
    )


def test_a_changed_price_is_a_new_row_and_the_old_one_is_kept_inactive(tmp_path):
    sync(write(tmp_path, BRIEF))
    old = active("fast")
    cheap = active("cheap")

    out = sync(write(tmp_path, BRIEF.replace("input_credits_per_mtok: 15", "input_credits_per_mtok: 16.5")))

    new = active("fast")
    assert new.pk != old.pk and new.input_credits_per_mtok == Decimal("16.5")
    assert new.output_credits_per_mtok == Decimal("60") and new.cached_input_credits_per_mtok == Decimal("7.5")
    old.refresh_from_db()
    assert not old.active and old.input_credits_per_mtok == Decimal("15")  # history, never rewritten
    assert ModelPrice.objects.filter(alias="fast").count() == 2
    assert active("cheap").pk == cheap.pk
    assert "price fast: a new row (input_credits_per_mtok: 15 -> 16.5); the old row kept, inactive" in out


def test_changed_deployments_are_made_the_files_list_and_the_price_stays(tmp_path):
    sync(write(tmp_path, BRIEF))
    price = active("fast")
    kept = Deployment.objects.get(alias="fast", upstream__name="backup")
    reordered = BRIEF.replace(
        """      - {upstream: primary, model: gpt-4o-mini}
      - {upstream: backup, model: openai/gpt-4o-mini, cost_input_credits_per_mtok: 12, cost_output_credits_per_mtok: 48}""",
        """      - {upstream: backup, model: openai/gpt-4o-mini, cost_input_credits_per_mtok: 12, cost_output_credits_per_mtok: 48}
      - {upstream: backup, model: openai/gpt-4o, weight: 3, priority: 0}""",
    )

    out = sync(write(tmp_path, reordered))

    assert routes("fast") == [
        ("backup", "openai/gpt-4o-mini", 0, 1, Decimal("12")),
        ("backup", "openai/gpt-4o", 0, 3, None),
    ]
    assert Deployment.objects.get(alias="fast", provider_model="openai/gpt-4o-mini").pk == kept.pk
    # The first deployment moved: the price's route (provider_model) follows, as a new row.
    assert active("fast").pk != price.pk and active("fast").provider_model == "openai/gpt-4o-mini"
    assert "deployments fast: - primary gpt-4o-mini; ~ backup openai/gpt-4o-mini: priority: 1 -> 0; + backup" in out


def test_dry_run_reports_the_changes_and_writes_nothing(tmp_path):
    sync(write(tmp_path, BRIEF))
    before = state()

    out = sync(
        write(tmp_path, BRIEF.replace("output_credits_per_mtok: 60", "output_credits_per_mtok: 61")), "--dry-run"
    )

    assert "price fast: a new row (output_credits_per_mtok: 60 -> 61)" in out
    assert out.strip().endswith("Dry run: nothing written.")
    assert state() == before


# --- what the file leaves out ----------------------------------------------------------


@pytest.fixture
def extra_rows(tmp_path):  # noqa: ANN001, ANN201
    """The file's rows, and an alias and an upstream the file does not name."""
    sync(write(tmp_path, BRIEF))
    legacy = upstream_set(name="legacy", kind="openai", api_key_env="LEGACY_KEY")
    model_price_create(alias="old", provider="openai", provider_model="gpt-3.5-turbo", input_credits_per_mtok=50,
                       output_credits_per_mtok=150)  # fmt: skip
    alias_deployments_set(alias="old", deployments=[{"upstream": legacy, "provider_model": "gpt-3.5-turbo"}])
    spare = upstream_set(name="spare", kind="anthropic")
    return legacy, spare


def test_without_prune_what_the_file_leaves_out_is_left_alone(tmp_path, extra_rows):
    before = state()

    sync(write(tmp_path, BRIEF))

    assert state() == before
    assert active("old").provider_model == "gpt-3.5-turbo" and routes("old") == [
        ("legacy", "gpt-3.5-turbo", 0, 1, None)
    ]


def test_prune_removes_the_aliases_and_unused_upstreams_the_file_leaves_out(tmp_path, extra_rows):
    old = active("old")
    # A price routed by the default `openai` upstream (no deployments) keeps that upstream.
    upstream_set(name="openai", kind="openai", api_key_env="OPENAI_API_KEY")
    upstream_set(name="anthropic", kind="anthropic", api_key_env="ANTHROPIC_API_KEY")

    out = sync(write(tmp_path, BRIEF), "--prune")

    old.refresh_from_db()
    assert not old.active and ModelPrice.objects.filter(alias="old").count() == 1  # kept as history
    assert not Deployment.objects.filter(alias="old").exists()
    assert set(Upstream.objects.values_list("name", flat=True)) == {"primary", "backup", "openai"}
    assert active("fast").provider == "openai"
    assert "alias old: pruned (price deactivated, 1 deployment deleted)" in out
    assert "upstream legacy: deleted (pruned)" in out and "upstream spare: deleted (pruned)" in out
    assert "note: upstream openai: kept, though not in the file" in out
    assert "pruned: 1 alias, 3 upstreams" in out  # legacy, spare, anthropic


def test_prune_refuses_to_delete_an_upstream_a_deployment_uses_and_writes_nothing(tmp_path, extra_rows):
    before = state()
    uses_legacy = BRIEF.replace("{upstream: backup, model: openai/gpt-4.1-nano}", "{upstream: legacy, model: nano}")

    with pytest.raises(CommandError) as error:
        sync(write(tmp_path, uses_legacy), "--prune")

    assert (
        "upstreams: 'legacy' is not in the file, so --prune would delete it, but deployments use it (alias cheap)"
        in (str(error.value))
    )
    assert state() == before


def test_prune_wants_both_lists_in_the_file(tmp_path, extra_rows):
    before = state()
    with pytest.raises(CommandError, match="--prune removes what the file leaves out: the file must have both"):
        sync(write(tmp_path, "upstreams: []\n"), "--prune")
    assert state() == before


# --- a bad file ------------------------------------------------------------------------

MODEL = """
  - alias: fast
    input_credits_per_mtok: 15
    output_credits_per_mtok: 60
    deployments:
      - {upstream: primary, model: gpt-4o-mini}
"""
UPSTREAMS = """
upstreams:
  - {name: primary, kind: openai, api_key_env: OPENAI_API_KEY}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            UPSTREAMS + "models:" + MODEL + MODEL.replace("fast", "spare").replace("primary", "backup")
            + MODEL.replace("fast", "mini").replace("primary, model: gpt-4o-mini}",
                                                    "primary, model: gpt-4o-mini}\n      - {upstream: standby, model: x}"),
            "models[2] (alias mini): deployments[1]: unknown upstream 'standby'",
        ),
        (UPSTREAMS.replace("OPENAI_API_KEY", "sk-proj-abc") + "models:" + MODEL,
         "upstreams[0] (name primary): api_key_env: An environment variable name"),
        (UPSTREAMS.replace("kind: openai", "kind: gemini") + "models:" + MODEL,
         "upstreams[0] (name primary): kind: Value 'gemini' is not a valid choice."),
        (UPSTREAMS.replace("api_key_env: OPENAI_API_KEY", f"api_key: {SECRET}") + "models:" + MODEL,
         "upstreams[0] (name primary): api_key: Keys are never stored"),
        (UPSTREAMS.replace("}", ", headers: {Authorization: Bearer x}}") + "models:" + MODEL,
         "upstreams[0] (name primary): headers: Header 'Authorization' carries a key"),
        (UPSTREAMS.replace("}", ", timeout_seconds: 0}") + "models:" + MODEL,
         "upstreams[0] (name primary): timeout_seconds: A positive number of seconds"),
        (UPSTREAMS.replace("name: primary", "name: pri mary") + "models:" + MODEL,
         "upstreams[0] (name pri mary): name: Enter a valid “slug”"),
        (UPSTREAMS + UPSTREAMS.replace("upstreams:", "") + "models:" + MODEL,
         "upstreams[1] (name primary): name: 'primary' is already upstreams[0] (name primary)"),
        (UPSTREAMS + "models:" + MODEL.replace("    deployments:", "    input_price: 3\n    deployments:"),
         "models[0] (alias fast): unknown key 'input_price' (known: alias, input_credits_per_mtok,"),
        (UPSTREAMS + "models:" + MODEL.replace("15", "15.123456789"),
         "models[0] (alias fast): input_credits_per_mtok: At most 8 decimal places."),
        (UPSTREAMS + "models:" + MODEL.replace("15", "-1"),
         "models[0] (alias fast): input_credits_per_mtok: A price must not be negative."),
        (UPSTREAMS + "models:" + MODEL.replace("15", "cheap"),
         "models[0] (alias fast): input_credits_per_mtok: a number is required, not 'cheap'"),
        (UPSTREAMS + "models:" + MODEL.replace("    input_credits_per_mtok: 15\n", ""),
         "models[0] (alias fast): input_credits_per_mtok: required"),
        (UPSTREAMS + "models:" + MODEL.replace("    deployments:", "    tier_threshold_tokens: 200000\n    deployments:"),
         "models[0] (alias fast): tier_input_credits_per_mtok: A tier needs its threshold and both its prices."),
        (UPSTREAMS + "models:" + MODEL.replace("    deployments:", "    context_tokens: 12.5\n    deployments:"),
         "models[0] (alias fast): context_tokens: a whole number is required, not Decimal('12.5')"),
        (UPSTREAMS + "models:" + MODEL.replace("    deployments:", "    counting: words\n    deployments:"),
         "models[0] (alias fast): counting: One of: bytes, o200k_base, cl100k_base."),
        (UPSTREAMS + "models:" + MODEL.replace("    deployments:", "    provider: gemini\n    deployments:"),
         "models[0] (alias fast): provider: One of: local, openai, anthropic."),
        (UPSTREAMS + "models:" + MODEL + MODEL,
         "models[1] (alias fast): alias: 'fast' is already models[0] (alias fast)"),
        (UPSTREAMS + "models:" + MODEL.replace("model: gpt-4o-mini}", "model: gpt-4o-mini, weight: 0}"),
         "models[0] (alias fast): deployments[0]: weight: at least 1"),
        (UPSTREAMS + "models:" + MODEL.replace("model: gpt-4o-mini}", "model: gpt-4o-mini, cost_input_credits_per_mtok: -2}"),
         "models[0] (alias fast): deployments[0]: cost_input_credits_per_mtok: A cost must not be negative."),
        (UPSTREAMS + "models:" + MODEL.replace("model: gpt-4o-mini}", "model: gpt-4o-mini, region: eu}"),
         "models[0] (alias fast): deployments[0]: unknown key 'region' (known: upstream, model,"),
        (UPSTREAMS + "models:" + MODEL.replace("{upstream: primary, model: gpt-4o-mini}", "{upstream: primary}"),
         "models[0] (alias fast): deployments[0]: model: required"),
        (UPSTREAMS + "models:" + MODEL.replace("      - {upstream: primary, model: gpt-4o-mini}\n", ""),
         "models[0] (alias fast): deployments: a list of at least one deployment"),
        (UPSTREAMS + "models:" + MODEL + "extra: 1\n", "unknown top-level key 'extra' (known: upstreams, models)"),
        (UPSTREAMS + "models:" + MODEL.replace("    output_credits_per_mtok: 60", "    output_credits_per_mtok: 60\n"
                                               "    output_credits_per_mtok: 70"),
         "found 'output_credits_per_mtok' twice"),
        (UPSTREAMS + "models: [\n", "not valid YAML"),
        ("- just\n- a list\n", "The file must be a mapping with an `upstreams` and a `models` list."),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_naming_the_entry_and_field_and_nothing_is_written(tmp_path, text, message):
    sync(write(tmp_path, BRIEF))
    before = state()

    with pytest.raises(CommandError) as error:
        sync(write(tmp_path, text, name="bad.yaml"))

    assert message in str(error.value)
    assert "nothing was written" in str(error.value)
    assert error.value.returncode == 1  # manage.py exits with it
    assert state() == before


def test_every_problem_of_a_file_is_named_at_once(tmp_path):
    text = (
        UPSTREAMS.replace("kind: openai", "kind: gemini")
        + "models:"
        + MODEL.replace("15", "x")
        + MODEL.replace("primary", "nowhere").replace("fast", "other")
    )

    with pytest.raises(ApplicationError) as error:
        models_file_apply(models_file_load(text))

    assert error.value.message.splitlines() == [
        "upstreams[0] (name primary): kind: Value 'gemini' is not a valid choice.",
        "models[0] (alias fast): input_credits_per_mtok: a number is required, not 'x'",
    ]  # the unknown upstream is checked against the database once the entries are sound
    assert not Upstream.objects.exists() and not ModelPrice.objects.exists()


def test_a_row_refused_while_applying_rolls_everything_back(tmp_path):
    # Sound on its own; the database says no: `fast` is served by the missing upstream.
    text = UPSTREAMS + "models:" + MODEL.replace("fast", "first") + MODEL.replace("primary", "ghost")
    with pytest.raises(
        CommandError, match="models\\[1\\] \\(alias fast\\): deployments\\[0\\]: unknown upstream 'ghost'"
    ):
        sync(write(tmp_path, text))
    assert not Upstream.objects.exists() and not ModelPrice.objects.exists()


# --- keys ------------------------------------------------------------------------------


def test_keys_never_reach_the_database_only_their_variables_names(tmp_path, monkeypatch, settings):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENROUTER_KEY", SECRET)
    settings.OPENAI_API_KEY = SECRET
    sync(write(tmp_path, BRIEF))
    out = StringIO()

    call_command("dumpdata", "routing", "billing.modelprice", stdout=out)

    assert "RECOGNISABLE" not in out.getvalue()
    assert '"api_key_env": "OPENAI_API_KEY"' in out.getvalue() and '"api_key_env": "OPENROUTER_KEY"' in out.getvalue()
    assert "RECOGNISABLE" not in export(tmp_path).read_text()


# --- export ----------------------------------------------------------------------------


@pytest.fixture
def varied_state():  # noqa: ANN201
    """Rows the console or a script could have made, every kind of field set."""
    sync_data = {
        "upstreams": [
            {"name": "openai", "kind": "openai", "api_key_env": "OPENAI_API_KEY"},
            {"name": "router", "kind": "openai", "base_url": "https://openrouter.ai/api/v1", "api_key_env": "OR_KEY",
             "timeout_seconds": 2.5, "max_retries": 0, "max_concurrent": 3, "headers": {"X-Title": "Parley"}},
            {"name": "claude", "kind": "anthropic", "api_key_env": "ANTHROPIC_API_KEY", "active": False},
        ],
        "models": [],
    }  # fmt: skip
    models_file_apply(sync_data)
    router, claude = Upstream.objects.get(name="router"), Upstream.objects.get(name="claude")
    model_price_create(
        alias="fast", provider="openai", provider_model="gpt-4o-mini", input_credits_per_mtok="123456.12345678",
        output_credits_per_mtok="0.15", cached_input_credits_per_mtok="7.5", cache_write_credits_per_mtok="0.00000001",
        tier_threshold_tokens=100000, tier_input_credits_per_mtok=30, tier_output_credits_per_mtok="120.5",
        context_tokens=128000, max_output_tokens=4096, counting="o200k_base",
    )  # fmt: skip
    alias_deployments_set(
        alias="fast",
        deployments=[
            {"upstream": "openai", "provider_model": "gpt-4o-mini", "cost_input_credits_per_mtok": "12.3"},
            {"upstream": router, "provider_model": "openai/gpt-4o-mini", "priority": 0, "weight": 4},
            {"upstream": router, "provider_model": "openai/gpt-4o", "priority": 7, "active": False},
        ],
    )
    # Its route differs from its first deployment's: kept by `provider` / `provider_model` keys.
    model_price_create(alias="sonnet", provider="openai", provider_model="sonnet-latest", input_credits_per_mtok=300,
                       output_credits_per_mtok=1500)  # fmt: skip
    alias_deployments_set(alias="sonnet", deployments=[{"upstream": claude, "provider_model": "claude-sonnet-4-5"}])
    # Priced before routing: no deployments, no `local` upstream row; its route is the price's.
    model_price_create(alias="echo", provider="local", provider_model="echo", input_credits_per_mtok=0,
                       output_credits_per_mtok=0)  # fmt: skip
    # Withdrawn: not exported, left alone by a sync without --prune.
    old = model_price_create(alias="old", provider="openai", provider_model="x", input_credits_per_mtok=1,
                             output_credits_per_mtok=1)  # fmt: skip
    old.active = False
    old.save()


def test_an_export_syncs_back_to_no_change(tmp_path, varied_state):
    before = state()

    path = export(tmp_path)
    out = sync(path)

    assert out.startswith("Nothing to change"), out
    assert state() == before
    assert not Deployment.objects.filter(alias="echo").exists()  # its route is still its price's
    assert sync(path, "--prune").startswith("Nothing to change")
    assert state() == before


def test_an_export_writes_decimals_as_plain_numbers_and_leaves_defaults_out(tmp_path, varied_state):
    text = export(tmp_path).read_text()

    data = models_file_load(text)
    fast = next(model for model in data["models"] if model["alias"] == "fast")
    assert "input_credits_per_mtok: 123456.12345678\n" in text
    assert "output_credits_per_mtok: 0.15\n" in text and "cached_input_credits_per_mtok: 7.5\n" in text
    assert "cache_write_credits_per_mtok: 0.00000001\n" in text and "tier_input_credits_per_mtok: 30\n" in text
    assert fast["input_credits_per_mtok"] == Decimal("123456.12345678")
    assert fast["deployments"] == [
        {"upstream": "openai", "model": "gpt-4o-mini", "cost_input_credits_per_mtok": Decimal("12.3")},
        {"upstream": "router", "model": "openai/gpt-4o-mini", "priority": 0, "weight": 4},
        {"upstream": "router", "model": "openai/gpt-4o", "priority": 7, "active": False},
    ]
    assert "- {upstream: openai, model: gpt-4o-mini, cost_input_credits_per_mtok: 12.3}" in text
    echo = next(model for model in data["models"] if model["alias"] == "echo")
    assert echo == {
        "alias": "echo", "input_credits_per_mtok": 0, "output_credits_per_mtok": 0,
        "deployments": [{"upstream": "local", "model": "echo"}],
    }  # fmt: skip
    sonnet = next(model for model in data["models"] if model["alias"] == "sonnet")
    assert (sonnet["provider"], sonnet["provider_model"]) == ("openai", "sonnet-latest")
    assert [model["alias"] for model in data["models"]] == ["echo", "fast", "sonnet"]
    router = next(upstream for upstream in data["upstreams"] if upstream["name"] == "router")
    assert router == {
        "name": "router", "kind": "openai", "base_url": "https://openrouter.ai/api/v1", "api_key_env": "OR_KEY",
        "timeout_seconds": Decimal("2.5"), "max_retries": 0, "headers": {"X-Title": "Parley"}, "max_concurrent": 3,
    }  # fmt: skip


def test_the_file_reader_keeps_every_digit_a_number_is_written_with():
    # A float would keep about 16 significant digits; a price may have 18 (PostgreSQL keeps them).
    data = models_file_load("a: 1234567890.12345678\nb: 7.5\nc: 15\nd: 1_000.5\ne: .inf\n")
    assert data == {"a": Decimal("1234567890.12345678"), "b": Decimal("7.5"), "c": 15, "d": Decimal("1000.5"),
                    "e": float("inf")}  # fmt: skip
    assert isinstance(data["c"], int)


def test_export_writes_to_stdout_without_output(varied_state):
    out = StringIO()
    call_command("models_export", stdout=out)
    assert out.getvalue().startswith("# Parley's models, exported ")
    assert [model["alias"] for model in models_file_load(out.getvalue())["models"]] == ["echo", "fast", "sonnet"]


# --- the services ------------------------------------------------------------------------


def test_upstream_set_refuses_a_bad_variable_name_naming_the_field():
    with pytest.raises(ApplicationError) as error:
        upstream_set(name="router", kind="openai", api_key_env="sk-or-v1-abc")
    assert error.value.fields == {"api_key_env": ["An environment variable name: letters, digits and _."]}
    assert not Upstream.objects.exists()


def test_upstream_set_changes_only_the_fields_given_and_saves_nothing_unchanged():
    first = upstream_set(name="router", kind="openai", timeout_seconds=30, headers={"X-Title": "Parley"})
    again = upstream_set(name="router", kind="openai")
    assert again.updated_at == first.updated_at
    changed = upstream_set(name="router", max_concurrent=5)
    assert (changed.pk, changed.timeout_seconds, changed.max_concurrent, changed.headers) == (
        first.pk, 30.0, 5, {"X-Title": "Parley"},
    )  # fmt: skip


def test_alias_deployments_set_orders_by_the_list_unless_a_priority_is_given():
    a, b = upstream_set(name="a", kind="openai"), upstream_set(name="b", kind="openai")
    alias_deployments_set(
        alias="fast",
        deployments=[
            {"upstream": a, "provider_model": "m1"},
            {"upstream": "b", "provider_model": "m2"},
            {"upstream": b, "provider_model": "m3", "priority": 0, "weight": 2},
        ],
    )
    assert [(d.upstream.name, d.provider_model, d.priority, d.weight) for d in Deployment.objects.all()] == [
        ("a", "m1", 0, 1), ("b", "m3", 0, 2), ("b", "m2", 1, 1),
    ]  # fmt: skip
    with pytest.raises(ApplicationError, match="deployments\\[0\\].upstream: Unknown upstream 'c'"):
        alias_deployments_set(alias="fast", deployments=[{"upstream": "c", "provider_model": "m1"}])
    assert alias_deployments_set(alias="fast", deployments=[]) == []


# --- the example in docs/ ------------------------------------------------------------------


def test_the_example_file_applies_cleanly_and_again_changes_nothing():
    out = sync(EXAMPLE)

    assert "upstreams: 4 created" in out and "prices: 4 new rows" in out
    assert set(Upstream.objects.values_list("name", flat=True)) == {"openai", "anthropic", "openrouter", "vllm"}
    vllm = Upstream.objects.get(name="vllm")
    assert (vllm.base_url, vllm.api_key_env) == ("http://127.0.0.1:8001/v1", "")
    assert routes("fast") == [
        ("openai", "gpt-4o-mini", 0, 1, Decimal("15")),
        ("openrouter", "openai/gpt-4o-mini", 1, 1, Decimal("15.75")),
    ]
    assert {alias: active(alias).counting for alias in ("fast", "claude", "local-llama")} == {
        "fast": "o200k_base", "claude": "bytes", "local-llama": "bytes",
    }  # fmt: skip
    assert (active("claude").provider, active("local-llama").provider) == ("anthropic", "openai")
    embedding = active("text-embedding-3-small")
    assert (embedding.kind, embedding.counting, embedding.output_credits_per_mtok) == ("embedding", "cl100k_base", 0)
    before = state()
    assert sync(EXAMPLE, "--prune").startswith("Nothing to change")
    assert state() == before


def test_the_manuals_full_example_is_the_example_file():
    manual = (ROOT / "docs" / "models-file.md").read_text()
    block = manual.split("## A full example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert models_file_load(block) == models_file_load(EXAMPLE.read_text())
