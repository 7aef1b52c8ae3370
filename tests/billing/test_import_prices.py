"""manage.py import_prices: prices from LiteLLM's price map. The data is a verbatim
excerpt of the real map (tests/billing/data/README.md says where and when from); at
CREDITS_PER_USD = 100, a USD-per-token price p is p * 1e8 credits per million tokens."""

import json
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from billing.models import ModelPrice
from billing.services import model_price_create
from chat.models import LLMCall
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory, TurnFactory

pytestmark = pytest.mark.django_db

EXCERPT = Path(__file__).parent / "data" / "litellm_prices_excerpt.json"


@pytest.fixture(autouse=True)
def _credits_per_usd(settings):  # noqa: ANN001
    settings.CREDITS_PER_USD = Decimal("100")


def run(*args: str, file: Path | str = EXCERPT) -> str:
    out = StringIO()
    call_command("import_prices", str(file), *args, stdout=out)
    return out.getvalue()


def active(alias: str) -> ModelPrice:
    return ModelPrice.objects.get(alias=alias, active=True)


def prices(price: ModelPrice) -> tuple:
    return (
        price.input_credits_per_mtok, price.output_credits_per_mtok,
        price.cached_input_credits_per_mtok, price.cache_write_credits_per_mtok,
    )  # fmt: skip


def tier(price: ModelPrice) -> tuple:
    return (price.tier_threshold_tokens, price.tier_input_credits_per_mtok, price.tier_output_credits_per_mtok)


def excerpt_with(tmp_path: Path, **entries: dict) -> Path:
    data = json.loads(EXCERPT.read_text())
    data.update(entries)
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))
    return path


# --- creating with --only -----------------------------------------------------------


def test_only_creates_a_price_per_key_with_the_entrys_prices_limits_and_counting():
    output = run("--only", "gpt-4o", "gpt-3.5-turbo", "claude-haiku-4-5")

    gpt4o = active("gpt-4o")
    assert (gpt4o.provider, gpt4o.provider_model) == ("openai", "gpt-4o")
    assert prices(gpt4o) == (Decimal("250"), Decimal("1000"), Decimal("125"), None)
    assert (gpt4o.context_tokens, gpt4o.max_output_tokens, gpt4o.counting) == (128000, 16384, "o200k_base")
    assert tier(gpt4o) == (None, None, None)

    gpt35 = active("gpt-3.5-turbo")
    assert prices(gpt35) == (Decimal("50"), Decimal("150"), None, None)
    assert (gpt35.context_tokens, gpt35.max_output_tokens, gpt35.counting) == (16385, 4096, "cl100k_base")

    haiku = active("claude-haiku-4-5")
    assert (haiku.provider, haiku.provider_model) == ("anthropic", "claude-haiku-4-5")
    assert (haiku.context_tokens, haiku.max_output_tokens, haiku.counting) == (200000, 64000, "bytes")

    assert ModelPrice.objects.count() == 3
    assert "gpt-4o: created, from 'gpt-4o'" in output
    assert "gpt-4o: input_credits_per_mtok: - -> 250" in output
    assert "gpt-4o: cached_input_credits_per_mtok: - -> 125" in output
    assert "gpt-4o: cache_write" not in output  # a new row lists the fields it sets
    assert output.rstrip().endswith("3 created, 0 changed, 0 unchanged.")


def test_an_openai_compatible_host_is_created_on_the_openai_provider_without_its_prefix():
    run("--only", "openrouter/openai/o3-mini")
    price = active("openrouter/openai/o3-mini")
    assert (price.provider, price.provider_model, price.counting) == ("openai", "openai/o3-mini", "o200k_base")
    assert prices(price) == (Decimal("110"), Decimal("440"), None, None)
    assert (price.context_tokens, price.max_output_tokens) == (128000, 65536)


def test_cache_prices_are_the_cache_read_and_cache_creation_costs():
    run("--only", "claude-haiku-4-5", "o3-mini")
    # Anthropic's 5-minute cache write; the 1-hour price (cache_creation_..._above_1hr) is not read.
    assert prices(active("claude-haiku-4-5")) == (Decimal("100"), Decimal("500"), Decimal("10"), Decimal("125"))
    # OpenAI bills no cache write: empty, so the input price.
    o3 = active("o3-mini")
    assert prices(o3) == (Decimal("110"), Decimal("440"), Decimal("55"), None)
    assert o3.cache_write_price == Decimal("110")


def test_the_above_200k_prices_are_the_long_context_tier():
    run("--only", "claude-sonnet-4-5-20250929")
    sonnet = active("claude-sonnet-4-5-20250929")
    assert prices(sonnet) == (Decimal("300"), Decimal("1500"), Decimal("30"), Decimal("375"))
    assert tier(sonnet) == (200000, Decimal("600"), Decimal("2250"))


def test_any_above_nk_tokens_tier_is_read_with_its_threshold():
    run("--only", "openrouter/qwen/qwen3.5-plus-02-15")
    qwen = active("openrouter/qwen/qwen3.5-plus-02-15")
    assert (qwen.provider, qwen.provider_model) == ("openai", "qwen/qwen3.5-plus-02-15")
    assert prices(qwen)[:2] == (Decimal("40"), Decimal("240"))
    assert tier(qwen) == (256000, Decimal("50"), Decimal("300"))
    assert qwen.context_tokens == 1000000


def test_a_tier_side_the_map_leaves_out_keeps_its_base_price(tmp_path):
    entry = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06,
             "output_cost_per_token": 2e-06, "input_cost_per_token_above_128k_tokens": 2e-06}  # fmt: skip
    run("--only", "gpt-5-long", file=excerpt_with(tmp_path, **{"gpt-5-long": entry}))
    assert tier(active("gpt-5-long")) == (128000, Decimal("200"), Decimal("200"))


def test_an_entry_with_several_tiers_is_skipped_with_a_note(tmp_path):
    entry = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06,
             "output_cost_per_token": 2e-06, "input_cost_per_token_above_128k_tokens": 2e-06,
             "input_cost_per_token_above_256k_tokens": 3e-06}  # fmt: skip
    output = run("--only", "two-tiers", file=excerpt_with(tmp_path, **{"two-tiers": entry}))
    assert "note: two-tiers: not created: several long-context tiers (128k, 256k)" in output
    assert not ModelPrice.objects.exists()


def test_other_modes_and_providers_parley_cannot_call_are_skipped_with_a_note():
    output = run("--only", "claude-sonnet-4-5-20250929-v1:0", "sample_spec", "gpt-4o")
    assert "note: claude-sonnet-4-5-20250929-v1:0: not created: LiteLLM provider 'bedrock' is not one" in output
    assert "note: sample_spec: not created: mode is 'one of: chat," in output
    assert "only chat and embedding entries are priced" in output
    assert list(ModelPrice.objects.values_list("alias", flat=True)) == ["gpt-4o"]


def test_an_embedding_entry_becomes_an_embedding_model():
    run("--only", "text-embedding-3-small")
    embedding = active("text-embedding-3-small")
    assert (embedding.kind, embedding.provider, embedding.provider_model, embedding.counting) == (
        "embedding", "openai", "text-embedding-3-small", "cl100k_base"
    )  # fmt: skip
    # $0.02 per million input tokens is 2 credits at 100 credits a dollar; no output.
    assert (embedding.input_credits_per_mtok, embedding.output_credits_per_mtok) == (Decimal("2"), Decimal("0"))
    assert embedding.context_tokens == 8191


def test_a_converted_price_is_rounded_up_at_the_8th_place():
    # 15 credits * 1.10000000001 = 16.5000000001500: up to 16.50000001, never down.
    run("--only", "gpt-4o-mini", "--markup", "10.000000001")
    mini = active("gpt-4o-mini")
    assert mini.input_credits_per_mtok == Decimal("16.50000001")
    assert mini.output_credits_per_mtok == Decimal("66.00000001")  # 60 * 1.10000000001 = 66.0000000006


# --- updating existing rows -----------------------------------------------------------


def test_an_existing_alias_gets_a_new_row_and_its_old_calls_keep_their_price(owner):
    old = model_price_create(alias="gpt-4o", provider="openai", provider_model="gpt-4o",
                             input_credits_per_mtok="500", output_credits_per_mtok="1500",
                             context_tokens=32000, max_output_tokens=4096)  # fmt: skip
    turn = TurnFactory(session=ChatSessionFactory(user=owner), model_alias="gpt-4o")
    call = LLMCall.objects.create(turn=turn, user=owner, price=old, model_alias="gpt-4o", provider="openai",
                                  provider_model="gpt-4o", input_tokens=1000, output_tokens=100)  # fmt: skip
    local = ModelPriceFactory(alias="fast")

    output = run()

    old.refresh_from_db()
    assert not old.active
    assert prices(old) == (Decimal("500"), Decimal("1500"), None, None)
    new = active("gpt-4o")
    assert new.pk != old.pk
    assert prices(new) == (Decimal("250"), Decimal("1000"), Decimal("125"), None)
    assert (new.context_tokens, new.max_output_tokens, new.counting) == (128000, 16384, "o200k_base")
    call.refresh_from_db()
    assert call.price_id == old.pk and call.price.input_credits_per_mtok == Decimal("500")
    # Without --only nothing is created, and a row the map does not name is left alone.
    assert ModelPrice.objects.count() == 3
    assert active("fast").pk == local.pk
    assert "gpt-4o: changed (a new row; the old one kept, inactive), from 'gpt-4o'" in output
    assert "gpt-4o: input_credits_per_mtok: 500 -> 250" in output
    assert "gpt-4o: cached_input_credits_per_mtok: none -> 125" in output
    assert "gpt-4o: context_tokens: 32000 -> 128000" in output
    assert "gpt-4o: counting: bytes -> o200k_base" in output
    assert "provider" not in output.replace("provider_model", "")  # unchanged fields are not listed
    assert output.rstrip().endswith("0 created, 1 changed, 0 unchanged.")


def test_a_row_is_matched_by_its_provider_model_without_the_litellm_prefix():
    reasoner = ModelPriceFactory(alias="reasoner", provider="openai", provider_model="openai/o3-mini")
    smart = ModelPriceFactory(alias="smart", provider="anthropic", provider_model="claude-sonnet-4-5-20250929",
                              counting="cl100k_base")  # fmt: skip
    # Its provider_model is a key, but of an entry on another provider: not this row's price.
    other = ModelPriceFactory(alias="other", provider="anthropic", provider_model="gpt-4o")

    run()

    new_reasoner = active("reasoner")
    assert new_reasoner.pk != reasoner.pk
    assert prices(new_reasoner)[:2] == (Decimal("110"), Decimal("440"))
    assert new_reasoner.context_tokens == 128000  # OpenRouter's entry, not OpenAI's (200000)
    new_smart = active("smart")
    assert tier(new_smart) == (200000, Decimal("600"), Decimal("2250"))
    assert new_smart.counting == "cl100k_base"  # not an OpenAI model: the row keeps its own
    assert new_smart.provider_model == smart.provider_model
    assert active("other").pk == other.pk


def test_limits_the_map_leaves_out_are_kept(tmp_path):
    entry = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06,
             "output_cost_per_token": 2e-06, "max_tokens": 4096}  # fmt: skip
    ModelPriceFactory(alias="bare", provider="openai", provider_model="bare", context_tokens=9000,
                      max_output_tokens=900)  # fmt: skip
    run(file=excerpt_with(tmp_path, bare=entry))
    bare = active("bare")
    assert prices(bare)[:2] == (Decimal("100"), Decimal("200"))
    assert (bare.context_tokens, bare.max_output_tokens) == (9000, 900)  # max_tokens (legacy) is not read


def test_only_limits_the_update_to_those_keys():
    gpt4o = ModelPriceFactory(alias="gpt-4o", provider="openai", provider_model="gpt-4o")
    ModelPriceFactory(alias="o3-mini", provider="openai", provider_model="o3-mini")
    run("--only", "o3-mini")
    assert active("gpt-4o").pk == gpt4o.pk
    assert active("o3-mini").input_credits_per_mtok == Decimal("110")


def test_an_existing_alias_whose_entry_is_an_embedding_model_becomes_one():
    before = ModelPriceFactory(alias="text-embedding-3-small", provider="openai", provider_model="text-embedding-3-small")
    run()
    after = active("text-embedding-3-small")
    assert after.pk != before.pk and (after.kind, after.output_credits_per_mtok) == ("embedding", Decimal("0"))


def test_markup_multiplies_every_price():
    ModelPriceFactory(alias="claude-sonnet-4-5-20250929", provider="anthropic",
                      provider_model="claude-sonnet-4-5-20250929")  # fmt: skip
    run("--markup", "20")
    sonnet = active("claude-sonnet-4-5-20250929")
    assert prices(sonnet) == (Decimal("360"), Decimal("1800"), Decimal("36"), Decimal("450"))
    assert tier(sonnet) == (200000, Decimal("720"), Decimal("2700"))


# --- dry run, rerun -------------------------------------------------------------------


def test_dry_run_prints_the_changes_and_writes_nothing():
    before = ModelPriceFactory(alias="gpt-4o", provider="openai", provider_model="gpt-4o")
    output = run("--dry-run", "--only", "gpt-4o", "o3-mini")
    assert list(ModelPrice.objects.all()) == [before]
    assert active("gpt-4o").input_credits_per_mtok == Decimal("150")
    assert "gpt-4o: input_credits_per_mtok: 150 -> 250" in output
    assert "o3-mini: created, from 'o3-mini'" in output
    assert "o3-mini: output_credits_per_mtok: - -> 440" in output
    assert output.rstrip().endswith("1 created, 1 changed, 0 unchanged. Dry run: nothing written.")
    # The real run prints the same changes.
    assert run("--only", "gpt-4o", "o3-mini").splitlines()[:-1] == output.splitlines()[:-1]


def test_a_rerun_changes_nothing():
    run("--only", "gpt-4o", "claude-sonnet-4-5-20250929", "openrouter/qwen/qwen3.5-plus-02-15", "--markup", "7.5")
    rows = sorted(ModelPrice.objects.values_list("pk", flat=True))
    output = run("--markup", "7.5")
    assert sorted(ModelPrice.objects.values_list("pk", flat=True)) == rows
    assert output.strip() == "0 created, 0 changed, 3 unchanged."
    assert run("--only", "gpt-4o", "--markup", "7.5").strip() == "0 created, 0 changed, 1 unchanged."


# --- bad input ------------------------------------------------------------------------


@pytest.fixture
def existing() -> ModelPrice:
    return ModelPriceFactory(alias="gpt-4o", provider="openai", provider_model="gpt-4o")


def assert_nothing_written(existing: ModelPrice) -> None:
    assert list(ModelPrice.objects.all()) == [existing]
    assert active("gpt-4o").pk == existing.pk


def test_a_file_that_is_not_json_is_refused(tmp_path, existing):
    path = tmp_path / "prices.json"
    path.write_text("<html>Not Found</html>")
    with pytest.raises(CommandError, match=r"prices\.json is not JSON"):
        run(file=path)
    assert_nothing_written(existing)


def test_json_that_is_not_an_object_is_refused(tmp_path, existing):
    path = tmp_path / "prices.json"
    path.write_text('[{"gpt-4o": {}}]')
    with pytest.raises(CommandError, match="not an object keyed by model.*it is a list"):
        run(file=path)
    assert_nothing_written(existing)


def test_a_missing_file_is_refused(tmp_path, existing):
    with pytest.raises(CommandError, match="Cannot read"):
        run(file=tmp_path / "nowhere.json")
    assert_nothing_written(existing)


def test_an_only_model_missing_from_the_file_is_refused(existing):
    with pytest.raises(CommandError, match="Not in the price map: gpt-9, claude-0"):
        run("--only", "gpt-4o", "gpt-9", "claude-0")
    assert_nothing_written(existing)


def test_a_negative_price_is_refused_and_nothing_is_written(tmp_path, existing):
    data = json.loads(EXCERPT.read_text())
    data["gpt-4o"]["cache_read_input_token_cost"] = -1.25e-06
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CommandError, match="gpt-4o: cache_read_input_token_cost is negative"):
        run("--only", "o3-mini", "gpt-4o", file=path)
    assert_nothing_written(existing)


def test_a_price_that_is_not_a_number_is_refused(tmp_path, existing):
    data = json.loads(EXCERPT.read_text())
    data["gpt-4o"]["output_cost_per_token"] = "1e-05"
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CommandError, match=r"gpt-4o: output_cost_per_token is not a number \('1e-05'\)"):
        run(file=path)
    assert_nothing_written(existing)


@pytest.mark.parametrize(("markup", "message"), [("-10", "must not be negative"), ("ten", "number of percent")])
def test_a_bad_markup_is_refused(existing, markup, message):
    with pytest.raises(CommandError, match=message):
        run("--markup", markup)
    assert_nothing_written(existing)


def test_a_price_the_service_refuses_rolls_back_the_whole_import(tmp_path, existing):
    # 1000 USD per token is 1e11 credits per million: more than a price row holds. The
    # o3-mini row planned before it is rolled back with it.
    entry = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1000, "output_cost_per_token": 1}
    with pytest.raises(CommandError, match="nothing was written: input_credits_per_mtok"):
        run("--only", "o3-mini", "gpt-4o", "zz-huge", file=excerpt_with(tmp_path, **{"zz-huge": entry}))
    assert_nothing_written(existing)
