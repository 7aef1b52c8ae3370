"""Read-only admin pages for sessions, turns, LLM calls and tool calls."""

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat.models import ChatSession, LLMCall, ToolCall, Turn
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.conftest import make_user
from tests.reporting.factories import CallSpec, record_turn

pytestmark = pytest.mark.django_db

LISTS = ["/admin/chat/chatsession/", "/admin/chat/turn/", "/admin/chat/llmcall/", "/admin/chat/toolcall/"]
NOON = datetime(2025, 1, 10, 12, tzinfo=UTC)


@pytest.fixture
def prices(db):  # noqa: ANN001, ANN201
    ModelPriceFactory(alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600"))
    ModelPriceFactory(alias="smart", input_credits_per_mtok=Decimal("3000"), output_credits_per_mtok=Decimal("15000"))


def make_history(users: int, turns_each: int) -> None:
    """Sessions, turns with two LLM calls each, and a tool call per turn."""
    for n in range(users):
        session = ChatSessionFactory(user=make_user(f"u{n}-{ChatSession.objects.count()}@example.com"))
        for _ in range(turns_each):
            calls = record_turn(
                session=session, calls=[CallSpec("fast", NOON, 100, 10), CallSpec("smart", NOON, 200, 20)]
            )
            ToolCall.objects.create(
                turn=calls[0].turn, llm_call=calls[0], tool="web_search", arguments={"query": "x"}, status="ok"
            )


def count_queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


@pytest.mark.parametrize("url", LISTS)
def test_lists_take_the_same_few_queries_for_many_rows(console, prices, url, django_assert_max_num_queries):
    make_history(users=1, turns_each=1)
    few = count_queries(console, url)
    make_history(users=60, turns_each=1)  # 61 sessions, turns and tool calls, 122 calls: over a page each
    with django_assert_max_num_queries(few):
        response = console.get(url)
    with django_assert_max_num_queries(few):  # facet counts stay off even when asked for
        assert console.get(url, {"_facets": "1"}).status_code == 200
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 50  # a full page
    assert few <= 8, few


def test_lists_show_the_rows_with_their_user(console, prices):
    make_history(users=1, turns_each=2)
    call = LLMCall.objects.select_related("user", "turn").first()
    html = console.get("/admin/chat/llmcall/").content.decode()
    assert call.user.email in html and f"/admin/chat/turn/{call.turn_id}/change/" in html
    html = console.get("/admin/chat/toolcall/").content.decode()
    assert call.user.email in html and "web_search" in html


def listed(client: Client, url: str, params: dict) -> set:
    response = client.get(url, params)
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


def test_filters_and_search(console, prices):
    make_history(users=2, turns_each=2)
    turn = Turn.objects.select_related("user").first()
    smart = set(LLMCall.objects.filter(model_alias="smart").values_list("pk", flat=True))
    assert len(smart) == 4
    assert listed(console, "/admin/chat/llmcall/", {"model_alias": "smart"}) == smart
    assert listed(console, "/admin/chat/turn/", {"q": str(turn.pk)}) == {turn.pk}
    assert listed(console, "/admin/chat/turn/", {"q": turn.user.email}) == set(
        Turn.objects.filter(user=turn.user).values_list("pk", flat=True)
    )
    assert listed(console, "/admin/chat/turn/", {"session__id__exact": turn.session_id}) == set(
        Turn.objects.filter(session_id=turn.session_id).values_list("pk", flat=True)
    )
    call = LLMCall.objects.last()
    assert listed(console, "/admin/chat/llmcall/", {"q": str(call.pk)}) == {call.pk}
    assert listed(console, "/admin/chat/toolcall/", {"tool": "web_search"}) == set(
        ToolCall.objects.values_list("pk", flat=True)
    )
    for junk in ["not-a-uuid", "99999999999999999999999", "'; drop table", "-5"]:
        assert listed(console, "/admin/chat/turn/", {"q": junk}) == set()
        assert listed(console, "/admin/chat/llmcall/", {"q": junk}) == set()


def test_a_turn_page_shows_its_messages_calls_and_tools_read_only(console, prices):
    make_history(users=1, turns_each=1)
    turn = Turn.objects.get()
    response = console.get(f"/admin/chat/turn/{turn.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "smart" in html and "web_search" in html
    assert 'type="submit"' not in html.split('id="content-main"', 1)[1]
    assert console.post(f"/admin/chat/turn/{turn.pk}/change/", {"status": "failed"}).status_code == 403
    turn.refresh_from_db()
    assert turn.status == Turn.Status.COMPLETED


def cells(html: str, column: str) -> list[str]:
    """The HTML in each cell of one column (Django's admin classes them field-<name>)."""
    return re.findall(rf'<td class="field-{column}">(.*?)</td>', html, flags=re.S)


def test_calls_show_their_token_classes_in_the_list_and_on_the_turn_page(console, prices):
    session = ChatSessionFactory(user=make_user("cache@example.com"))
    [plain] = record_turn(session=session, calls=[CallSpec("fast", NOON, 120, 30)])
    [call] = record_turn(
        session=session,
        calls=[
            CallSpec("smart", NOON, 9000, 800, cached_input_tokens=7000, cache_write_tokens=1500, reasoning_tokens=640)
        ],
    )
    [reasoned] = record_turn(session=session, calls=[CallSpec("smart", NOON, 50, 900, reasoning_tokens=900)])
    LLMCall.objects.filter(pk=call.pk).update(usage_reported=False)
    # Newest first; the classes' words are joined by no-break spaces (read here as spaces).
    html = console.get("/admin/chat/llmcall/").content.decode().replace("\u00a0", " ")
    # The classes under their totals, only those a call had.
    assert cells(html, "tokens_in") == [
        "50",
        '9000<br><span class="quiet token-classes">7000 cached, 1500 cache write</span>',
        "120",
    ]
    assert cells(html, "tokens_out") == [
        '900<br><span class="quiet token-classes">900 reasoning</span>',
        '800<br><span class="quiet token-classes">640 reasoning</span>',
        "30",
    ]
    assert ['alt="False"' in cell for cell in cells(html, "usage_reported")] == [False, True, False]
    # The filter finds calls whose usage was counted, not reported.
    assert listed(console, "/admin/chat/llmcall/", {"usage_reported__exact": "0"}) == {call.pk}
    assert listed(console, "/admin/chat/llmcall/", {"usage_reported__exact": "1"}) == {plain.pk, reasoned.pk}
    # Sorting by a total still works (the column orders by its field; "o" counts from 0).
    ascending = console.get("/admin/chat/llmcall/", {"o": "6"}).content.decode()
    assert [cell.split("<", 1)[0] for cell in cells(ascending, "tokens_in")] == ["50", "120", "9000"]

    inline = console.get(f"/admin/chat/turn/{call.turn_id}/change/").content.decode().replace("\u00a0", " ")
    assert "7000 cached, 1500 cache write" in inline.split('class="field-tokens_in"', 1)[1].split("</td>", 1)[0]
    assert "640 reasoning" in inline.split('class="field-tokens_out"', 1)[1].split("</td>", 1)[0]
    # The call's own page lists every class.
    page = console.get(f"/admin/chat/llmcall/{call.pk}/change/").content.decode()
    for field, value in [("cached_input_tokens", "7000"), ("cache_write_tokens", "1500"), ("reasoning_tokens", "640")]:
        assert f'<div class="readonly">{value}</div>' in page.split(f"field-{field}", 1)[1], field


@pytest.mark.parametrize("url", LISTS)
def test_nothing_can_be_added_or_deleted(console, prices, url):
    make_history(users=1, turns_each=1)
    model = {"chatsession": ChatSession, "turn": Turn, "llmcall": LLMCall, "toolcall": ToolCall}[url.split("/")[3]]
    row = model.objects.first()
    before = model.objects.count()
    assert console.get(url + "add/").status_code == 403
    assert console.post(f"{url}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert console.post(
        url, {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"}
    ).status_code in (
        200,
        302,
    )
    assert model.objects.count() == before
