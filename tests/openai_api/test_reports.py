"""/v1 turns are turns like any other, marked: the key's session says `openai`, and
the transactions, GET turns/{id}, users/me/usage and the admin usage page show them,
told apart from chat turns."""

from decimal import Decimal

import pytest

from billing.money import usage_amount
from chat.models import ChatSession
from tests.chat.conftest import post_turn

pytestmark = pytest.mark.django_db(transaction=True)


def complete(client, content: str) -> dict:  # noqa: ANN001
    response = client.post(
        "/v1/chat/completions", {"model": "fast", "messages": [{"role": "user", "content": content}]}
    )
    assert response.status_code == 200, response.content
    return {"turn": response["X-Parley-Turn"], "charged": Decimal(response["X-Parley-Credits-Charged"])}


def test_v1_turns_show_everywhere_and_reports_tell_them_apart(owner_client, owner, fast, console):
    from billing.services import wallet_grant

    wallet_grant(user=owner, amount=Decimal("10"), reason="test credits")
    chat = ChatSession.objects.create(user=owner, model_alias="fast")
    assert post_turn(owner_client, chat, "a chat turn").status_code == 201
    first, second = complete(owner_client, "first via v1"), complete(owner_client, "second via v1")

    sessions = owner_client.get("/api/v1/sessions").json()["results"]
    assert sorted(s["source"] for s in sessions) == ["chat", "openai"]
    detail = owner_client.get(f"/api/v1/turns/{first['turn']}").json()
    assert detail["status"] == "completed" and detail["credits_charged"] == f"{first['charged']:.8f}"
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert detail["llm_calls"][0]["finish_reason"] == "stop"

    debits = [t for t in owner_client.get("/api/v1/users/me/transactions").json()["results"] if t["kind"] == "debit"]
    assert {first["turn"], second["turn"]} <= {t["reference"] for t in debits} and len(debits) == 3

    usage = owner_client.get("/api/v1/users/me/usage").json()
    assert {row["source"]: row["calls"] for row in usage["by_source"]} == {"chat": 1, "openai": 2}
    only = owner_client.get("/api/v1/users/me/usage", {"source": "openai"}).json()
    assert only["source"] == "openai" and only["totals"]["calls"] == 2
    # Each call's usage figure is its cost at 4 places (billing.money.usage_amount), summed.
    assert Decimal(only["totals"]["credits"]) == usage_amount(first["charged"]) + usage_amount(second["charged"])
    assert owner_client.get("/api/v1/users/me/usage", {"source": "fax"}).status_code == 400

    page = console.get("/admin/reporting/usage/", {"source": "openai"}).content.decode()
    by_source = page.split('id="usage-by-source"', 1)[1].split("</table>", 1)[0]
    assert "OpenAI endpoint (/v1)" in by_source and "Chat API</a>" not in by_source
    scope = page.split('class="usage-scope"', 1)[1].split("</p>", 1)[0]  # the filter in force, said in words
    assert 'Source: <span id="usage-source">OpenAI endpoint (/v1)</span>' in scope and "all sources" in scope
