"""The staff console's upstream and deployment pages: the key's variable named and
said set or not (never its value), the state (cooldown, last error), the last 24
hours' calls and margin, the end-cooldown action, the forms' checks, and who may
open them."""

import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat.models import LLMCall
from routing.cooldown import failure_record, states
from routing.models import Deployment, Upstream
from routing.selectors import UpstreamUsage, upstream_usage
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.conftest import make_user, staff_with
from tests.reporting.factories import CallSpec, record_turn

pytestmark = pytest.mark.django_db

UPSTREAMS = "/admin/routing/upstream/"
DEPLOYMENTS = "/admin/routing/deployment/"
SECRET = "sk-or-v1-RECOGNISABLE-SECRET-5150"
NO_INLINES = {
    "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0",
    "deployments-MIN_NUM_FORMS": "0", "deployments-MAX_NUM_FORMS": "1000",
}  # fmt: skip


def cells(html: str, column: str) -> list[str]:
    """The HTML of each cell of one list column (Django classes them field-<name>)."""
    return re.findall(rf'<t[dh] class="field-{column}[^"]*">(.*?)</t[dh]>', html, flags=re.S)


def text(html: str) -> str:
    shown = unescape(re.sub(r"<[^>]+>", " ", html.replace("<wbr>", "")))
    return re.sub(r"\s+", " ", shown.replace("\u00a0", " ")).strip()


def column(client: Client, name: str) -> dict[str, str]:
    """One column of the upstream list as text, by upstream name."""
    html = client.get(UPSTREAMS).content.decode()
    names = [text(cell).split()[0] for cell in cells(html, "upstream_name")]
    return dict(zip(names, map(text, cells(html, name)), strict=True))


@pytest.fixture
def upstreams(monkeypatch) -> dict[str, Upstream]:  # noqa: ANN001
    monkeypatch.setenv("OPENROUTER_TEST_KEY", SECRET)
    monkeypatch.delenv("GROQ_TEST_KEY", raising=False)
    rows = [
        Upstream(
            name="openrouter", kind="openai", base_url="https://openrouter.ai/api/v1", api_key_env="OPENROUTER_TEST_KEY",
            timeout_seconds=30, max_concurrent=8, headers={"X-Title": "Parley"},
        ),
        Upstream(name="groq", kind="openai", api_key_env="GROQ_TEST_KEY"),
        Upstream(name="local", kind="local"),
    ]  # fmt: skip
    for row in rows:
        row.save()
    return {row.name: row for row in rows}


def test_the_list_names_each_key_variable_and_says_set_or_not_set_never_the_key(console, upstreams):
    response = console.get(UPSTREAMS)
    assert response.status_code == 200
    html = response.content.decode()
    assert SECRET not in html and "RECOGNISABLE" not in html
    keys = column(console, "key")
    assert keys == {"groq": "GROQ_TEST_KEY not set", "local": "no key", "openrouter": "OPENROUTER_TEST_KEY set"}
    assert column(console, "host") == {
        "groq": "default: OPENAI_BASE_URL", "local": "built in", "openrouter": "https://openrouter.ai/api/v1",
    }  # fmt: skip
    assert column(console, "limits") == {
        "groq": "60s timeout (default) no limit", "local": "60s timeout (default) no limit",
        "openrouter": "30s timeout 8 at once",
    }  # fmt: skip
    assert column(console, "state") == {"groq": "ok", "local": "ok", "openrouter": "ok"}
    # The kinds without a row are named: their defaults from the settings serve them.
    [note] = re.findall(r'<span id="upstream-defaults">(.*?)</span>', html, flags=re.S)
    assert text(note).startswith("No row for openai, anthropic: the settings' defaults")

    page = console.get(f"{UPSTREAMS}{upstreams['openrouter'].pk}/change/").content.decode()
    assert SECRET not in page and "RECOGNISABLE" not in page
    assert "OPENROUTER_TEST_KEY" in page and "never stored here nor shown" in page
    assert "The key lives in the server's environment" in page


def test_a_key_set_in_the_settings_counts_as_set_and_is_not_shown(console, upstreams, settings):
    settings.GROQ_TEST_KEY = "gsk_ANOTHER-SECRET-77"
    html = console.get(UPSTREAMS).content.decode()
    assert "ANOTHER-SECRET" not in html
    assert column(console, "key")["groq"] == "GROQ_TEST_KEY set"


def test_a_cooling_upstream_shows_until_when_why_and_its_last_error(console, upstreams, settings):
    settings.UPSTREAM_COOLDOWN_FAILURES = 2
    for _ in range(2):
        failure_record("openrouter", reason="rate_limited", message="429 Too Many Requests from openrouter")
    until = states(["openrouter"])["openrouter"].cooling_until
    shown = column(console, "state")
    hhmmss = datetime.fromtimestamp(until, tz=UTC).strftime("%H:%M:%S")
    assert shown["openrouter"].startswith(f"cooling down until {hhmmss} UTC (rate_limited) last error ")
    assert shown["openrouter"].endswith(": 429 Too Many Requests from openrouter")
    assert re.search(r"last error \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown["openrouter"])
    assert shown["groq"] == "ok"
    # One failure is not a cooldown: the state is ok, with the last error under it.
    failure_record("groq", reason="timeout", message="Timed out after 60s")
    assert re.fullmatch(r"ok last error .* UTC: Timed out after 60s", column(console, "state")["groq"])

    page = console.get(f"{UPSTREAMS}{upstreams['openrouter'].pk}/change/").content.decode()
    assert f"cooling down until {hhmmss} UTC" in page and "rate_limited" in page


def test_end_cooldown_now_clears_the_cooldown(console, upstreams, settings):
    settings.UPSTREAM_COOLDOWN_FAILURES = 1
    failure_record("openrouter", reason="server_error", message="502 Bad Gateway")
    assert states(["openrouter"])["openrouter"].cooling
    response = console.post(
        UPSTREAMS,
        {"action": "end_cooldown", "_selected_action": [upstreams["openrouter"].pk, upstreams["groq"].pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Cooldown ended: openrouter." in response.content.decode()
    assert not states(["openrouter"])["openrouter"].cooling
    assert column(console, "state")["openrouter"].startswith("ok last error ")
    # Nothing cooling: said so.
    response = console.post(
        UPSTREAMS, {"action": "end_cooldown", "_selected_action": [upstreams["groq"].pk]}, follow=True
    )
    assert "None of these upstreams was cooling down." in response.content.decode()


def test_a_view_only_staff_member_cannot_end_a_cooldown(upstreams, settings):
    settings.UPSTREAM_COOLDOWN_FAILURES = 1
    failure_record("openrouter", reason="server_error", message="502 Bad Gateway")
    client = Client()
    client.force_login(staff_with("routing.view_upstream"))
    assert client.get(UPSTREAMS).status_code == 200
    client.post(UPSTREAMS, {"action": "end_cooldown", "_selected_action": [upstreams["openrouter"].pk]})
    assert states(["openrouter"])["openrouter"].cooling


def add_upstream(client: Client, **fields: str) -> tuple[int, dict]:
    data = {"name": "together", "kind": "openai", "api_key_env": "TOGETHER_API_KEY", "headers": "{}", **fields}
    response = client.post(f"{UPSTREAMS}add/", {**data, **NO_INLINES})
    errors = response.context["adminform"].form.errors if response.status_code == 200 else {}
    return response.status_code, errors


@pytest.mark.parametrize("name", ["TOGETHER-KEY", "1KEY", "MY KEY", "$TOGETHER_API_KEY", "sk-abc123"])
def test_a_bad_environment_variable_name_is_refused(console, name):
    status, errors = add_upstream(console, api_key_env=name)
    assert status == 200 and list(errors) == ["api_key_env"]
    assert "An environment variable name" in errors["api_key_env"][0]
    assert not Upstream.objects.exists()


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ('["X-Title", "Parley"]', "A JSON object"),
        ('"X-Title: Parley"', "A JSON object"),
        ('{"X-Retries": 3}', "a text value"),
        ('{"X-Nested": {"a": "b"}}', "a text value"),
        ('{"Authorization": "Bearer sk-123"}', "carries a key"),
        ('{"x-api-key": "sk-123"}', "carries a key"),
        ('{"X-Title": "a\\r\\nInjected: 1"}', "no line breaks"),
    ],
)
def test_headers_must_be_a_json_object_of_strings_and_carry_no_key(console, headers, says):
    status, errors = add_upstream(console, headers=headers)
    assert status == 200 and list(errors) == ["headers"], errors
    assert says in errors["headers"][0]
    assert not Upstream.objects.exists()


def test_other_checks_of_the_form_and_a_valid_upstream_is_saved(console):
    assert list(add_upstream(console, base_url="openrouter.ai/api/v1")[1]) == ["base_url"]
    assert list(add_upstream(console, timeout_seconds="0")[1]) == ["timeout_seconds"]
    assert list(add_upstream(console, max_concurrent="0")[1]) == ["max_concurrent"]
    status, _ = add_upstream(console, base_url="https://api.together.xyz/v1", headers='{"X-Title": "Parley"}')
    assert status == 302
    row = Upstream.objects.get()
    assert (row.name, row.api_key_env, row.headers) == ("together", "TOGETHER_API_KEY", {"X-Title": "Parley"})


def calls_at(upstream: str, at: datetime, *, cost: str, upstream_cost: str | None, status: str = "ok") -> LLMCall:
    [call] = record_turn(session=ChatSessionFactory(user=make_user(f"u{time.monotonic_ns()}@example.com")),
                         calls=[CallSpec("fast", at, 100, 10)], rollup=False)  # fmt: skip
    LLMCall.objects.filter(pk=call.pk).update(
        upstream=upstream, cost=Decimal(cost), status=status,
        upstream_cost=None if upstream_cost is None else Decimal(upstream_cost),
    )  # fmt: skip
    return call


@pytest.fixture
def usage(upstreams) -> None:  # noqa: ANN001
    ModelPriceFactory(alias="fast")
    hour_ago, yesterday = timezone.now() - timedelta(hours=1), timezone.now() - timedelta(hours=30)
    calls_at("openrouter", hour_ago, cost="1.50000000", upstream_cost="1.00000000")
    calls_at("openrouter", hour_ago, cost="0.50000000", upstream_cost=None)  # cost not recorded
    calls_at("openrouter", hour_ago, cost="0", upstream_cost=None, status="failed")
    calls_at("openrouter", yesterday, cost="100", upstream_cost="1")  # before the last 24 hours
    calls_at("groq", hour_ago, cost="2.00000000", upstream_cost="2.50000000")


def test_upstream_usage_is_one_grouped_query(usage, django_assert_num_queries):
    with django_assert_num_queries(1):
        found = upstream_usage(since=timezone.now() - timedelta(hours=24))
    assert found == {
        "openrouter": UpstreamUsage(
            calls=3, failures=1, charged=Decimal("2"), costed_calls=1, costed_charged=Decimal("1.5"),
            upstream_cost=Decimal("1"),
        ),
        "groq": UpstreamUsage(
            calls=1, failures=0, charged=Decimal("2"), costed_calls=1, costed_charged=Decimal("2"),
            upstream_cost=Decimal("2.5"),
        ),
    }  # fmt: skip
    assert found["openrouter"].margin == Decimal("0.5") and found["groq"].margin == Decimal("-0.5")
    assert UpstreamUsage().margin is None


def test_the_list_shows_the_last_24_hours_charged_cost_and_margin(console, usage):
    assert column(console, "usage_calls") == {"groq": "1", "local": "0", "openrouter": "3 1 failed"}
    assert "Calls and credits: the last 24 hours." in text(console.get(UPSTREAMS).content.decode())
    assert column(console, "usage_credits") == {
        "groq": "charged 2.0000 cost 2.5000 margin -0.5000",
        # The margin over the one call whose cost was recorded; the failed call is not charged.
        "openrouter": "charged 2.0000 cost 1.0000 margin 0.5000 over 1 of 2 calls",
        "local": "charged 0.0000 cost — margin —",
    }
    page = console.get(f"{UPSTREAMS}{Upstream.objects.get(name='openrouter').pk}/change/").content.decode()
    figures = dict(re.findall(r'<div class="form-row field-(\w+)">.*?<div class="readonly">(.*?)</div>', page, re.S))
    assert {name: text(figures[name]) for name in ["calls", "failures", "charged", "upstream_cost", "margin"]} == {
        "calls": "3", "failures": "1", "charged": "2.0000", "upstream_cost": "1.0000",
        "margin": "0.5000 over 1 of 2 calls",
    }  # fmt: skip


def test_the_list_takes_the_same_queries_for_many_upstreams(console, usage):
    with CaptureQueriesContext(connection) as few:
        assert console.get(UPSTREAMS).status_code == 200
    for n in range(12):
        Upstream.objects.create(name=f"extra-{n}", kind="openai", api_key_env=f"EXTRA_{n}")
    with CaptureQueriesContext(connection) as many:
        assert console.get(UPSTREAMS).status_code == 200
    assert len(many) == len(few)
    assert sum("GROUP BY" in query["sql"] for query in many.captured_queries) == 1


def test_deployments_are_listed_by_alias_then_priority_and_filtered(console, upstreams):
    ModelPriceFactory(alias="fast")
    ModelPriceFactory(alias="smart")
    rows = [
        Deployment.objects.create(alias="smart", upstream=upstreams["groq"], provider_model="llama-70b", priority=1),
        Deployment.objects.create(
            alias="smart", upstream=upstreams["openrouter"], provider_model="meta/llama-70b", priority=0,
            cost_input_credits_per_mtok=Decimal("0.59"), cost_output_credits_per_mtok=Decimal("0.79"),
        ),
        Deployment.objects.create(alias="fast", upstream=upstreams["local"], provider_model="local-fast"),
    ]  # fmt: skip
    response = console.get(DEPLOYMENTS)
    assert [row.pk for row in response.context["cl"].result_list] == [rows[2].pk, rows[1].pk, rows[0].pk]
    html = response.content.decode()
    assert list(map(text, cells(html, "cost_input"))) == ["—", "0.59", "—"]
    assert list(map(text, cells(html, "upstream"))) == ["local", "openrouter", "groq"]
    by_alias = console.get(DEPLOYMENTS, {"alias": "smart"}).context["cl"].result_list
    assert [row.pk for row in by_alias] == [rows[1].pk, rows[0].pk]
    by_upstream = console.get(DEPLOYMENTS, {"upstream__id__exact": upstreams["groq"].pk}).context["cl"].result_list
    assert [row.pk for row in by_upstream] == [rows[0].pk]
    # The upstream's page lists its deployments, to edit there.
    page = console.get(f"{UPSTREAMS}{upstreams['openrouter'].pk}/change/").content.decode()
    assert 'id="deployments-group"' in page and 'value="meta/llama-70b"' in page


def test_a_deployment_of_an_unpriced_alias_is_refused(console, upstreams):
    ModelPriceFactory(alias="fast")
    data = {"upstream": upstreams["groq"].pk, "provider_model": "llama", "priority": "0", "weight": "1"}
    response = console.post(f"{DEPLOYMENTS}add/", {**data, "alias": "fsat", "active": "on"})
    assert response.status_code == 200
    assert "No model price has this alias" in response.context["adminform"].form.errors["alias"][0]
    assert not Deployment.objects.exists()
    assert console.post(f"{DEPLOYMENTS}add/", {**data, "alias": "fast", "active": "on"}).status_code == 302
    assert Deployment.objects.get().alias == "fast"


def test_llm_calls_show_and_filter_by_their_upstream(console, usage):
    response = console.get("/admin/chat/llmcall/", {"upstream": "groq"})
    assert response.status_code == 200
    assert {call.upstream for call in response.context["cl"].result_list} == {"groq"}
    html = response.content.decode()
    assert list(map(text, cells(html, "upstream"))) == ["groq"]
    assert "?upstream=openrouter" in html and "?upstream=anthropic" in html  # rows and the kinds' defaults


@pytest.mark.parametrize("url", [UPSTREAMS, f"{UPSTREAMS}add/", DEPLOYMENTS])
def test_only_staff_with_the_permission_may_open_the_pages(url, upstreams):
    anonymous = Client()
    assert anonymous.get(url).status_code == 302
    customer = Client()
    customer.force_login(make_user("customer@example.com"))
    response = customer.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    helpdesk = Client()
    helpdesk.force_login(staff_with("reporting.view_usage"))
    assert helpdesk.get(url).status_code == 403
