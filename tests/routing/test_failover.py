"""Failover across an alias's deployments, driven through the real `openai` and
`anthropic` SDKs against fake upstreams (tests/fakes/llm_servers): one answering 503,
one refusing its key, one too slow, one that serves.

What must hold: the call that served is the one billed (one debit per turn); every
failed attempt is an LLM call with status `failed`, its upstream and its error,
costing nothing; a failure that is the request's own (400) or that comes after
output is not retried; every deployment failing fails the turn with nothing charged
(/v1: 502 in OpenAI's body); an upstream failing often cools down, is tried last
meanwhile, and first again after."""

import subprocess
import sys
import time
from decimal import Decimal

import openai
import pytest

from billing.models import CreditTransaction, TransactionKind
from chat.llm import ChatMessage
from chat.models import ChatSession, LLMCall, Turn
from routing.cooldown import cooldown_clear, slot_release, slot_take, states
from routing.models import Deployment, Upstream
from routing.selectors import routes_for
from tests.chat.conftest import START_BALANCE, make_price, post_turn, wallet_of
from tests.conftest import ROOT
from tests.fakes.llm_servers import CutStream, Error, FakeAnthropicServer, FakeOpenAIServer, Reply, Stall

# A turn runs when its transaction commits, so these tests commit.
pytestmark = pytest.mark.django_db(transaction=True)

PRIMARY_KEY = "sk-primary-test-key-0001"
BACKUP_KEY = "sk-backup-test-key-0002"


@pytest.fixture
def servers(settings, monkeypatch):  # noqa: ANN001, ANN201
    """Three fake upstreams (two OpenAI-compatible, one Anthropic), their keys in the environment."""
    started = {"primary": FakeOpenAIServer().start(), "backup": FakeOpenAIServer().start(),
               "claude": FakeAnthropicServer().start()}  # fmt: skip
    monkeypatch.setenv("PARLEY_TEST_PRIMARY_KEY", PRIMARY_KEY)
    monkeypatch.setenv("PARLEY_TEST_BACKUP_KEY", BACKUP_KEY)
    monkeypatch.setenv("PARLEY_TEST_CLAUDE_KEY", "sk-ant-claude-test-0003")
    settings.LLM_MAX_RETRIES = 0  # each upstream answers once; the failover is what is tested
    yield started
    for server in started.values():
        server.stop()


def upstream(name: str, server, *, kind: str = "openai", **extra) -> Upstream:  # noqa: ANN001
    return Upstream.objects.create(
        name=name, kind=kind, base_url=server.base_url, api_key_env=f"PARLEY_TEST_{name.upper()}_KEY",
        timeout_seconds=extra.pop("timeout_seconds", 5.0), **extra,
    )  # fmt: skip


@pytest.fixture
def routed(servers, transactional_db):  # noqa: ANN001, ANN201
    """Alias `fast`: primary (OpenAI-compatible), then backup, then claude (Anthropic)."""
    price = make_price("fast", provider="openai", provider_model="gpt-4o-mini")
    for priority, (name, kind, model) in enumerate(
        [("primary", "openai", "gpt-4o-mini"), ("backup", "openai", "openai/gpt-4o-mini"),
         ("claude", "anthropic", "claude-haiku")]  # fmt: skip
    ):
        Deployment.objects.create(
            alias="fast", upstream=upstream(name, servers[name], kind=kind), provider_model=model, priority=priority
        )
    return price


@pytest.fixture
def session(routed, funded_owner):  # noqa: ANN001, ANN201
    return ChatSession.objects.create(user=funded_owner, title="Routed", model_alias="fast")


def turn_calls(turn_id) -> list[LLMCall]:  # noqa: ANN001
    return list(LLMCall.objects.filter(turn_id=turn_id).order_by("id"))


def debits_of(turn_id) -> list[CreditTransaction]:  # noqa: ANN001
    return list(CreditTransaction.objects.filter(kind=TransactionKind.DEBIT, reference__contains=str(turn_id)))


def test_a_503_fails_over_to_the_next_deployment_and_only_the_served_call_is_billed(routed, servers, session,
                                                                                    owner_client):  # fmt: skip
    servers["primary"].script(Error(503))
    servers["backup"].script(Reply(text="From the backup.", input_tokens=40, output_tokens=9))

    response = post_turn(owner_client, session, "Hello?")

    turn = Turn.objects.get(pk=response.json()["id"])
    assert turn.status == Turn.Status.COMPLETED
    failed, served = turn_calls(turn.pk)
    assert (failed.status, failed.upstream, failed.cost, failed.input_tokens) == ("failed", "primary", 0, 0)
    assert "HTTP 503" in failed.error
    assert (served.status, served.upstream, served.provider_model) == ("ok", "backup", "openai/gpt-4o-mini")
    assert served.cost > 0
    [debit] = debits_of(turn.pk)
    assert -debit.amount == served.cost
    assert wallet_of(session.user).balance == START_BALANCE - served.cost
    # Each upstream got its own key, read from the variable it names; the claude one was never asked.
    assert servers["primary"].requests[0].headers["authorization"] == f"Bearer {PRIMARY_KEY}"
    assert servers["backup"].requests[0].headers["authorization"] == f"Bearer {BACKUP_KEY}"
    assert servers["backup"].requests[0].body["model"] == "openai/gpt-4o-mini"
    assert servers["claude"].requests == []


def test_a_refused_key_and_a_slow_upstream_fail_over_to_anthropic(routed, servers, session, owner_client):
    Upstream.objects.filter(name="backup").update(timeout_seconds=0.5)
    servers["primary"].script(Error(401, message="Incorrect API key provided: sk-prim***0001"))
    servers["backup"].script(Stall(3.0))
    servers["claude"].script(Reply(text="Claude answers.", input_tokens=30, output_tokens=5))

    turn = Turn.objects.get(pk=post_turn(owner_client, session, "Hello?").json()["id"])

    assert turn.status == Turn.Status.COMPLETED
    assert turn.messages.last().content == "Claude answers."
    calls = turn_calls(turn.pk)
    assert [(c.upstream, c.status, c.provider) for c in calls] == [
        ("primary", "failed", "openai"), ("backup", "failed", "openai"), ("claude", "ok", "anthropic")
    ]  # fmt: skip
    assert "refused this service's credentials" in calls[0].error and "sk-" not in calls[0].error
    assert "did not answer within 0.5 s" in calls[1].error
    sent = servers["claude"].requests[0].headers
    assert "sk-ant-claude-test-0003" in sent.get("x-api-key", "") + sent.get("authorization", "")
    assert len(debits_of(turn.pk)) == 1


def test_every_deployment_failing_fails_the_turn_with_nothing_charged(routed, servers, session, owner_client):
    servers["primary"].script(Error(503))
    servers["backup"].script(Error(429))
    servers["claude"].script(Error(529))

    turn = Turn.objects.get(pk=post_turn(owner_client, session, "Hello?").json()["id"])

    assert turn.status == Turn.Status.FAILED
    assert "Every deployment of fast failed (3 tried)" in turn.error
    assert all(c.status == "failed" and c.cost == 0 for c in turn_calls(turn.pk))
    assert debits_of(turn.pk) == []
    assert wallet_of(session.user).balance == START_BALANCE
    assert wallet_of(session.user).held == 0


def test_the_requests_own_fault_is_not_retried_elsewhere(routed, servers, session, owner_client):
    servers["primary"].script(Error(400, message="Invalid 'messages'."))

    turn = Turn.objects.get(pk=post_turn(owner_client, session, "Hello?").json()["id"])

    assert turn.status == Turn.Status.FAILED
    assert [c.upstream for c in turn_calls(turn.pk)] == ["primary"]
    assert servers["backup"].requests == []
    assert states(["primary"])["primary"].last_error == ""  # not the upstream's failure: no cooldown count


def test_once_output_has_streamed_there_is_no_retry(routed, servers, session, owner_client, streamed):  # noqa: ARG001
    servers["primary"].script(CutStream(text="Half an answ"))

    turn = Turn.objects.get(pk=post_turn(owner_client, session, "Hello?").json()["id"])

    [partial] = turn_calls(turn.pk)
    assert (partial.upstream, partial.status) == ("primary", "partial")
    assert partial.cost > 0
    assert turn.messages.last().content == "Half an answ"
    assert servers["backup"].requests == []
    assert [-d.amount for d in debits_of(turn.pk)] == [partial.cost]


def test_v1_answers_502_in_openais_body_when_every_deployment_fails(routed, servers, funded_owner, live_server):
    from accounts.services import api_key_create  # noqa: PLC0415 (a test helper kept beside its one use)

    _, key = api_key_create(user=funded_owner, name="sdk")
    for name in ("primary", "backup", "claude"):
        servers[name].script(Error(503 if name != "claude" else 529))
    client = openai.OpenAI(api_key=key, base_url=f"{live_server.url}/v1", max_retries=0)

    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "Hi"}])

    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "upstream_error"
    assert "Every deployment of fast failed" in raised.value.body["message"]
    assert wallet_of(funded_owner).balance == START_BALANCE


def test_v1_fails_over_through_the_openai_sdk_with_one_debit(routed, servers, funded_owner, live_server):
    from accounts.services import api_key_create  # noqa: PLC0415 (a test helper kept beside its one use)

    _, key = api_key_create(user=funded_owner, name="sdk")
    servers["primary"].script(Error(502))
    servers["backup"].script(Reply(text="Served.", input_tokens=20, output_tokens=4))
    client = openai.OpenAI(api_key=key, base_url=f"{live_server.url}/v1", max_retries=0)

    answer = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "Hi"}])

    assert answer.choices[0].message.content == "Served."
    turn = Turn.objects.get(user=funded_owner)
    assert [c.status for c in turn_calls(turn.pk)] == ["failed", "ok"]
    assert len(debits_of(turn.pk)) == 1


# --- cooldown --------------------------------------------------------------------------


def test_an_upstream_failing_often_cools_down_is_tried_last_then_first_again(routed, servers, session, owner_client,
                                                                             settings):  # fmt: skip
    settings.UPSTREAM_COOLDOWN_FAILURES = 2
    settings.UPSTREAM_COOLDOWN_SECONDS = 1.0
    servers["primary"].script(Error(503), Error(503))
    for _ in range(2):
        assert Turn.objects.get(pk=post_turn(owner_client, session, "Hi").json()["id"]).status == Turn.Status.COMPLETED
    state = states(["primary"])["primary"]
    assert state.cooling and state.cooling_reason == "http_503" and "HTTP 503" in state.last_error

    asked = len(servers["primary"].requests)
    turn = Turn.objects.get(pk=post_turn(owner_client, session, "Hi").json()["id"])
    assert [c.upstream for c in turn_calls(turn.pk)] == ["backup"]  # skipped while it cools down
    assert len(servers["primary"].requests) == asked
    assert [r.endpoint.name for r in routes_for(routed)] == ["backup", "claude", "primary"]

    time.sleep(1.1)
    turn = Turn.objects.get(pk=post_turn(owner_client, session, "Hi").json()["id"])
    assert [c.upstream for c in turn_calls(turn.pk)] == ["primary"]  # the cooldown ended
    cooldown_clear("primary")


def test_a_cooling_upstream_is_still_tried_when_it_is_the_only_one(servers, settings, transactional_db):
    settings.UPSTREAM_COOLDOWN_FAILURES = 1
    price = make_price("solo", provider="openai", provider_model="m")
    Deployment.objects.create(alias="solo", upstream=upstream("primary", servers["primary"]), provider_model="m")
    from routing.cooldown import failure_record  # noqa: PLC0415 (beside its one use)

    failure_record("primary", reason="http_503", message="down")
    [route] = routes_for(price)
    assert route.cooling and route.endpoint.name == "primary"


def test_an_upstream_at_its_concurrency_limit_is_tried_after_the_others(routed, servers, session, owner_client):
    Upstream.objects.filter(name="primary").update(max_concurrent=1)
    held = slot_take("primary", limit=1, lease=60)
    assert held is not None
    try:
        turn = Turn.objects.get(pk=post_turn(owner_client, session, "Hi").json()["id"])
    finally:
        slot_release("primary", held)
    assert [c.upstream for c in turn_calls(turn.pk)] == ["backup"]
    assert servers["primary"].requests == []


def test_equal_priorities_share_the_calls_by_weight(servers, transactional_db):
    price = make_price("shared", provider="openai", provider_model="m")
    Deployment.objects.create(alias="shared", upstream=upstream("primary", servers["primary"]), provider_model="m",
                              weight=1)  # fmt: skip
    Deployment.objects.create(alias="shared", upstream=upstream("backup", servers["backup"]), provider_model="m",
                              weight=3)  # fmt: skip
    firsts = [routes_for(price)[0].endpoint.name for _ in range(800)]
    assert 0.65 < firsts.count("backup") / len(firsts) < 0.85


def test_an_alias_without_deployments_keeps_its_price_provider(settings, transactional_db):
    settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY = "http://127.0.0.1:9/v1", "sk-test-openai"
    price = make_price("plain", provider="openai", provider_model="gpt-4o")
    [route] = routes_for(price)
    assert (route.endpoint.name, route.endpoint.base_url, route.provider_model) == (
        "openai", "http://127.0.0.1:9/v1", "gpt-4o"
    )  # fmt: skip
    assert route.endpoint.api_key == "sk-test-openai"  # OPENAI_API_KEY, the default upstream's
    assert "sk-test-openai" not in repr(route)


@pytest.mark.redis
def test_a_cooldown_is_seen_by_another_process(tmp_path):
    """Two processes on the same Redis: one records the failures, the other skips the upstream."""
    from django.conf import settings as django_settings  # noqa: PLC0415 (the REDIS_URL this run has)

    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": django_settings.REDIS_URL or "redis://127.0.0.1:6379/0",
           "DJANGO_SETTINGS_MODULE": "config.settings", "UPSTREAM_COOLDOWN_FAILURES": "2"}  # fmt: skip
    name = f"shared-{time.time_ns()}"
    setup = "import django; django.setup(); from routing import cooldown as c; "
    record = setup + f"[c.failure_record({name!r}, reason='http_503', message='down') for _ in range(2)]"
    read = setup + f"s = c.states([{name!r}])[{name!r}]; print(s.cooling, s.cooling_reason)"

    subprocess.run([sys.executable, "-c", record], env=env, cwd=ROOT, check=True, timeout=60)
    seen = subprocess.run([sys.executable, "-c", read], env=env, cwd=ROOT, check=True, timeout=60,
                          capture_output=True, text=True)  # fmt: skip

    assert seen.stdout.split() == ["True", "http_503"]
    subprocess.run([sys.executable, "-c", setup + f"c.cooldown_clear({name!r})"], env=env, cwd=ROOT, timeout=60)


def test_failed_attempts_cost_nothing_and_keep_their_upstream_in_usage(routed, servers, session, owner_client):
    servers["primary"].script(Error(500))
    turn = Turn.objects.get(pk=post_turn(owner_client, session, "Hi").json()["id"])
    failed = turn_calls(turn.pk)[0]
    assert (failed.cost, failed.credits_burned, failed.upstream_cost) == (Decimal("0"), Decimal("0"), None)


# --- the Procfile's worker ----------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.postgres
def test_a_real_worker_fails_over_with_the_key_from_its_own_environment(servers, worker_with_env, owner_client,
                                                                        funded_owner):  # fmt: skip
    """The worker process reads the upstreams from the database and each key from the
    variable its upstream names, in its own environment; one debit, the failure recorded."""
    make_price("fast", provider="openai", provider_model="gpt-4o-mini")
    for priority, name in enumerate(("primary", "backup")):
        Deployment.objects.create(alias="fast", upstream=upstream(name, servers[name]), provider_model="m",
                                  priority=priority)  # fmt: skip
    worker_with_env(PARLEY_TEST_PRIMARY_KEY=PRIMARY_KEY, PARLEY_TEST_BACKUP_KEY=BACKUP_KEY, LLM_MAX_RETRIES="0")
    servers["primary"].script(Error(503))
    servers["backup"].script(Reply(text="Served by the backup.", input_tokens=25, output_tokens=6))
    session = ChatSession.objects.create(user=funded_owner, title="Routed", model_alias="fast")

    answer = post_turn(owner_client, session, "Hello worker", prefer="wait=30")

    assert answer.status_code == 201, answer.content
    assert answer.data["messages"][-1]["content"] == "Served by the backup."
    assert [(c.upstream, c.status) for c in turn_calls(answer.data["id"])] == [("primary", "failed"), ("backup", "ok")]
    assert servers["backup"].requests[0].headers["authorization"] == f"Bearer {BACKUP_KEY}"
    assert len(debits_of(answer.data["id"])) == 1


# --- every kind of call takes the same routes ---------------------------------------------


@pytest.mark.parametrize("mode", ["roundtable", "orchestrator"])
def test_round_tables_and_the_orchestrator_fail_over_like_a_single_reply(mode, servers, owner, owner_client):
    """Every participant's reply (and the orchestrator's choice) goes through the same
    routing: the primary answers 503 each time; the built-in `local` upstream serves."""
    from tests.chat.engine_support import fund, panel  # noqa: PLC0415 (the modes' helpers, beside their one use)

    local = Upstream.objects.create(name="offline", kind="local")
    for alias in ("gpt", "boss"):
        make_price(alias, provider="openai", provider_model="m")
        Deployment.objects.create(alias=alias, upstream=upstream(f"p-{alias}", servers["primary"]),
                                  provider_model="m", priority=0)  # fmt: skip
        Deployment.objects.create(alias=alias, upstream=local, provider_model="echo", priority=1)
    servers["primary"].script(*[Error(503)] * 10)
    fund(owner)
    session = ChatSession.objects.create(user=owner, model_alias="gpt")
    panel(session, ("Analyst", "gpt"), ("Critic", "gpt"), mode=mode,
          orchestrator_alias="boss" if mode == "orchestrator" else None)  # fmt: skip

    body = owner_client.post(f"/api/v1/sessions/{session.pk}/turns", {"content": "Go"}, format="json").data

    assert body["status"] == "completed", body
    calls = turn_calls(body["id"])
    served = [c for c in calls if c.status == "ok"]
    assert served and all(c.upstream == "offline" for c in served)
    assert all(c.upstream.startswith("p-") and c.cost == 0 for c in calls if c.status == "failed")
    assert len(calls) == 2 * len(served)  # each served call came after one failed attempt
    assert len(debits_of(body["id"])) == 1


def test_a_turned_off_default_upstream_fails_the_call_saying_so(session, owner_client, transactional_db):  # noqa: ARG001
    make_price("plain", provider="openai", provider_model="gpt-4o")
    Upstream.objects.create(name="openai", kind="openai", api_key_env="OPENAI_API_KEY", active=False)
    session.model_alias = "plain"
    session.save()

    turn = Turn.objects.get(pk=post_turn(owner_client, session, "Hi").json()["id"])

    assert turn.status == Turn.Status.FAILED
    assert "No active upstream serves the model alias plain" in turn.error
    assert wallet_of(session.user).balance == START_BALANCE


@pytest.mark.parametrize(("host", "field"), [("api.openai.com", "max_completion_tokens"), ("127.0.0.1", "max_tokens")])
def test_openais_own_host_gets_max_completion_tokens_and_compatible_servers_max_tokens(host, field, servers,
                                                                                       monkeypatch):  # fmt: skip
    """OpenAI's reasoning models refuse max_tokens; vLLM, Ollama and llama.cpp know only it.
    The name api.openai.com is made to resolve to the fake server (the network is patched)."""
    import socket  # noqa: PLC0415 (beside its one use)

    from chat.llm import Endpoint, provider_for  # noqa: PLC0415 (beside its one use)

    resolve = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda name, *a, **k: resolve(
        "127.0.0.1" if name == "api.openai.com" else name, *a, **k))  # fmt: skip
    server = servers["primary"]
    endpoint = Endpoint(name="u", kind="openai", base_url=f"http://{host}:{server.port}/v1", max_retries=0)

    provider_for(endpoint).complete(model="m", messages=[ChatMessage(role="user", content="Hi")], max_output_tokens=64)

    assert server.requests[-1].body[field] == 64
