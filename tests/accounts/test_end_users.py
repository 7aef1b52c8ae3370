"""End users: a key's requests name the person they are for (the OpenAI `user` field,
else the X-OpenWebUI-User-Id header Open WebUI forwards); each end user of a key has
the key's end-user budget, or the owner's override, or is blocked. Through the real
`openai` SDK on /v1 and the chat API; the budget is held with the wallet's hold."""

from decimal import Decimal

import openai
import pytest
from rest_framework.test import APIClient

from accounts.models import EndUser
from accounts.services import api_key_create
from billing.models import CreditTransaction, SpendCounter
from billing.services import wallet_grant
from chat.llm import ChatMessage
from chat.models import Turn
from chat.services.completions import CompletionRequest, completion_worst_case
from tests.chat.conftest import make_price

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def fast(db):  # noqa: ANN001, ANN201
    return make_price("fast")


@pytest.fixture
def worst(fast) -> Decimal:  # noqa: ANN001
    """What one QUESTION holds: the end-user budgets below are counted in these."""
    request = CompletionRequest(price=fast, messages=[ChatMessage(role="user", content="Hello there")])
    return completion_worst_case(request=request)[1]


def key_for(user, **limits) -> tuple[object, str]:  # noqa: ANN001
    wallet_grant(user=user, amount=Decimal("100"), reason="test credits")
    return api_key_create(user=user, name="webui", scopes=["chat", "openai", "keys"], **limits)


def sdk_for(live_server, raw_key: str, **headers: str) -> openai.OpenAI:  # noqa: ANN001
    return openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key=raw_key, max_retries=0, timeout=30, default_headers=headers
    )


def api(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def test_the_user_field_and_the_open_webui_header_name_end_users_with_their_spend(live_server, owner, fast):
    api_key, raw = key_for(owner)
    sdk = sdk_for(live_server, raw)
    sdk.chat.completions.create(model="fast", messages=QUESTION, user="ada")
    by_header = sdk_for(live_server, raw, **{"X-OpenWebUI-User-Id": "9f1c-bob", "X-OpenWebUI-User-Email": "b@x.io"})
    by_header.chat.completions.create(model="fast", messages=QUESTION)
    # The body's field wins over the header.
    by_header.chat.completions.create(model="fast", messages=QUESTION, user="ada")

    ada, bob = EndUser.objects.get(external_id="ada"), EndUser.objects.get(external_id="9f1c-bob")
    assert Turn.objects.filter(end_user=ada).count() == 2 and Turn.objects.filter(end_user=bob).count() == 1
    listed = {row["external_id"]: row for row in api(raw).get("/api/v1/users/me/end-users").json()["results"]}
    assert set(listed) == {"ada", "9f1c-bob"}
    charged = {
        name: sum(Turn.objects.filter(end_user__external_id=name).values_list("credits_charged", flat=True))
        for name in listed
    }
    for name, row in listed.items():
        assert Decimal(row["spent"]) == charged[name] > 0
        assert (row["held"], row["budget_credits"], row["resets_at"], row["blocked"]) == (
            "0.00000000", None, None, False
        )
        assert row["api_key_id"] == api_key.pk and row["api_key_name"] == "webui"


def test_one_end_user_over_the_key_budget_is_refused_and_the_others_are_not(live_server, owner, fast, worst):
    # A budget of one request's hold: the first passes, and what it was charged leaves
    # less than a hold for the next.
    _, raw = key_for(owner, end_user_budget_credits=worst, end_user_budget_window="day")
    sdk = sdk_for(live_server, raw)
    sdk.chat.completions.create(model="fast", messages=QUESTION, user="ada")
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="fast", messages=QUESTION, user="ada")
    error = refused.value.body
    assert refused.value.status_code == 429 and error["code"] == "insufficient_quota"
    assert refused.value.response.headers["x-should-retry"] == "false"  # the SDK did not try it again
    assert error["message"].startswith("End user 'ada' of API key 'webui': budget of ")
    assert "per day" in error["message"] and "resets at" in error["message"]
    debits = CreditTransaction.objects.filter(kind="debit").count()

    # Another end user of the same key, and requests that name nobody, still pass.
    sdk.chat.completions.create(model="fast", messages=QUESTION, user="bob")
    sdk.chat.completions.create(model="fast", messages=QUESTION)
    assert CreditTransaction.objects.filter(kind="debit").count() == debits + 2
    ada = EndUser.objects.get(external_id="ada")
    counter = SpendCounter.objects.get(end_user=ada)
    assert counter.held == 0 and 0 < counter.spent <= worst


def test_the_owner_overrides_blocks_and_restores_an_end_user(live_server, owner, fast, worst):
    _, raw = key_for(owner, end_user_budget_credits=Decimal("0"))
    sdk = sdk_for(live_server, raw)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="fast", messages=QUESTION, user="ada")
    ada = EndUser.objects.get(external_id="ada")  # named, though refused: the owner can lift it
    client = api(raw)

    lifted = client.put(f"/api/v1/users/me/end-users/{ada.pk}", {"budget_credits": str(worst * 3)}, format="json")
    assert lifted.status_code == 200, lifted.content
    assert (lifted.json()["override"], lifted.json()["budget_window"]) == (True, None)
    sdk.chat.completions.create(model="fast", messages=QUESTION, user="ada")

    blocked = client.put(f"/api/v1/users/me/end-users/{ada.pk}", {"blocked": True}, format="json")
    assert blocked.json()["blocked"] is True
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="fast", messages=QUESTION, user="ada")
    assert refused.value.body["message"] == "End user 'ada' of API key 'webui' is blocked by its owner."

    restored = client.delete(f"/api/v1/users/me/end-users/{ada.pk}").json()
    assert (restored["override"], restored["blocked"], restored["budget_credits"]) == (False, False, "0.00000000")
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="fast", messages=QUESTION, user="ada")


def test_the_chat_api_names_end_users_too_and_refuses_with_402(owner, fast):
    api_key, raw = key_for(owner, end_user_budget_credits=Decimal("0"))
    client = api(raw)
    session = client.post("/api/v1/sessions", {"title": "t", "model_alias": "fast"}, format="json").json()
    refused = client.post(
        f"/api/v1/sessions/{session['id']}/turns", {"content": "Hi", "end_user": "ada"}, format="json"
    )
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "spend_limit_exceeded"
    assert "End user 'ada'" in refused.json()["error"]["message"]
    by_header = client.post(
        f"/api/v1/sessions/{session['id']}/turns", {"content": "Hi"}, format="json", HTTP_X_OPENWEBUI_USER_ID="bob"
    )
    assert by_header.status_code == 402 and "End user 'bob'" in by_header.json()["error"]["message"]
    # Nobody named: the key's own limits only.
    assert client.post(f"/api/v1/sessions/{session['id']}/turns", {"content": "Hi"}, format="json").status_code in (
        201, 202,
    )  # fmt: skip
    assert sorted(EndUser.objects.filter(api_key=api_key).values_list("external_id", flat=True)) == ["ada", "bob"]


def test_end_users_are_the_owners_own_and_changing_them_needs_the_keys_scope(owner, other_user, fast):
    _, raw = key_for(owner)
    _, other_raw = key_for(other_user)
    api(raw).post("/api/v1/sessions", {"title": "t"}, format="json")
    end_user = EndUser.objects.create(api_key=api_key_create(user=owner, name="k2")[0], external_id="ada")
    assert api(other_raw).get(f"/api/v1/users/me/end-users/{end_user.pk}").status_code == 404
    assert api(other_raw).put(f"/api/v1/users/me/end-users/{end_user.pk}", {"blocked": True}).status_code == 404
    assert api(other_raw).get("/api/v1/users/me/end-users").json()["results"] == []

    _, chat_only = api_key_create(user=owner, name="chat-only", scopes=["chat", "openai"])
    assert api(chat_only).get(f"/api/v1/users/me/end-users/{end_user.pk}").status_code == 200
    forbidden = api(chat_only).put(f"/api/v1/users/me/end-users/{end_user.pk}", {"blocked": True}, format="json")
    assert forbidden.status_code == 403 and "keys" in forbidden.json()["error"]["message"]
    bad = api(raw).put(f"/api/v1/users/me/end-users/{end_user.pk}", {"budget_credits": "-1"}, format="json")
    assert bad.status_code == 400 and "budget_credits" in bad.json()["error"]["fields"]
    window_only = api(raw).put(f"/api/v1/users/me/end-users/{end_user.pk}", {"budget_window": "day"}, format="json")
    assert window_only.status_code == 400 and "budget_window" in window_only.json()["error"]["fields"]
    assert api(raw).get("/api/v1/users/me/end-users?api_key=%C2%B2").status_code == 400


def test_usage_breaks_down_by_end_user_and_purpose(live_server, owner, fast):
    api_key, raw = key_for(owner)
    sdk = sdk_for(live_server, raw)
    sdk.chat.completions.create(model="fast", messages=QUESTION, user="ada")
    sdk.chat.completions.create(model="fast", messages=QUESTION, user="ada", metadata={"purpose": "title"})
    sdk_for(live_server, raw, **{"X-Parley-Purpose": "tags"}).chat.completions.create(
        model="fast", messages=QUESTION, user="bob"
    )
    sdk.chat.completions.create(model="fast", messages=QUESTION)

    client = api(raw)
    summary = client.get("/api/v1/users/me/usage").json()
    by_end_user = {row["external_id"]: row["calls"] for row in summary["by_end_user"]}
    assert by_end_user == {"ada": 2, "bob": 1, None: 1}
    assert {row["purpose"]: row["calls"] for row in summary["by_purpose"]} == {"": 2, "title": 1, "tags": 1}
    ada = EndUser.objects.get(external_id="ada")
    only_ada = client.get(f"/api/v1/users/me/usage?end_user_id={ada.pk}").json()
    assert only_ada["totals"]["calls"] == 2 and only_ada["end_user_id"] == ada.pk
    titles = client.get("/api/v1/users/me/usage?purpose=title").json()
    assert titles["totals"]["calls"] == 1
    csv = client.get("/api/v1/users/me/usage?format=csv").content.decode()
    assert "\r\nend_user,ada,webui," in csv and "\r\npurpose,title,," in csv
    by_name = client.get("/api/v1/users/me/usage?end_user=ada").json()
    assert by_name["totals"]["calls"] == 2 and by_name["end_user"] == "ada"
    nobody = client.get("/api/v1/users/me/usage?end_user_id=0").json()
    assert nobody["totals"]["calls"] == 1


def test_bad_labels_are_400_naming_them(live_server, owner, fast):
    _, raw = key_for(owner)
    sdk = sdk_for(live_server, raw, **{"X-Parley-Purpose": "no spaces allowed"})
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="fast", messages=QUESTION)
    assert "X-Parley-Purpose" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError) as too_long:
        sdk_for(live_server, raw).chat.completions.create(model="fast", messages=QUESTION, user="x" * 257)
    assert too_long.value.body["param"] == "user"
    assert Turn.objects.count() == 0 and EndUser.objects.count() == 0


@pytest.mark.postgres
def test_fifty_concurrent_first_requests_of_one_end_user_spend_at_most_their_budget(owner, fast, settings):
    """The race LiteLLM's users report (#40095): one end user's first requests at once
    must not pass the budget together. Queued, not run, while they race: each keeps
    its whole hold, so exactly BUDGET of them fit."""
    from chat.models import ChatSession
    from chat.services.turns import turn_run, turn_worst_case_cost
    from config.celery import app as celery_app
    from tests.billing.test_concurrency import run_together

    settings.CELERY_TASK_ALWAYS_EAGER = False
    celery_app.conf.task_always_eager = False
    settings.MAX_CONCURRENT_TURNS_PER_USER = 100
    budget_requests, threads = 5, 50
    sessions = [ChatSession.objects.create(user=owner, title=f"c{n}", model_alias="fast") for n in range(threads)]
    worst = turn_worst_case_cost(session=sessions[0], price=fast, content="Hi")
    api_key, raw = key_for(owner, end_user_budget_credits=worst * budget_requests, end_user_budget_window="week")

    def post(session):  # noqa: ANN001, ANN202
        response = api(raw).post(f"/api/v1/sessions/{session.pk}/turns", {"content": "Hi", "end_user": "ada"})
        return response.status_code, response.json()

    try:
        results = run_together([lambda s=session: post(s) for session in sessions])
    finally:
        celery_app.control.purge()
    assert [r for r in results if isinstance(r, Exception)] == []
    accepted = [body for status, body in results if status == 202]
    refused = [body for status, body in results if status == 402]
    assert len(accepted) + len(refused) == threads, [status for status, _ in results]
    assert all("End user 'ada' of API key 'webui'" in body["error"]["message"] for body in refused)
    ada = EndUser.objects.get(api_key=api_key, external_id="ada")
    counter = SpendCounter.objects.get(end_user=ada)
    assert counter.spent + counter.held <= worst * budget_requests
    if not Turn.objects.exclude(status=Turn.Status.QUEUED).exists():  # no stray worker took one
        assert len(accepted) == budget_requests and counter.held == worst * budget_requests
    assert len(accepted) >= budget_requests
    for body in accepted:
        turn_run(turn_id=body["id"])
    counter.refresh_from_db()
    charged = sum(Turn.objects.filter(end_user=ada).values_list("credits_charged", flat=True))
    assert counter.held == 0 and counter.spent == charged <= worst * budget_requests
