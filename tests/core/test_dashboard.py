"""The console's dashboard (issue 30): the admin index opens on the figures of how the
business is doing, each linking to its list filtered the same way, read in a bounded
number of queries whatever the data, and shown only to staff who may open that list."""

import re
from datetime import timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone
from djstripe.models import WebhookEventTrigger

from billing.models import TopUp, TopUpEvent, Wallet
from billing.services import wallet_debit, wallet_grant
from chat.models import Turn
from core import selectors
from reporting.models import UsageDaily
from routing.cooldown import failure_record
from routing.models import Upstream
from tests.billing.factories import TopUpFactory
from tests.chat.factories import ChatSessionFactory, TurnFactory
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
STRIPE_TEST_KEY = "sk_test_" + "0" * 24  # Stripe on (never called here)

# The page's own reads: the session and its user, and the figures (one query each,
# two for Stripe's, one plus a cache round trip for the upstreams).
DASHBOARD_QUERIES = 11


def trigger(**fields: object) -> WebhookEventTrigger:
    return WebhookEventTrigger.objects.create(remote_ip="127.0.0.1", headers={}, body="{}", **fields)


def business(settings) -> dict:  # noqa: ANN001
    """Two customers with credits, top-ups old and new, a week of spend, turns that
    failed and one that did not, Stripe work waiting, an upstream cooling down."""
    settings.UPSTREAM_COOLDOWN_FAILURES = 1
    settings.STRIPE_SECRET_KEY = STRIPE_TEST_KEY
    ann, bob, idle = (make_user(f"{name}@example.com") for name in ("ann", "bob", "idle"))
    wallet_grant(user=ann, amount=Decimal("100.5"), reason="trial")
    wallet_grant(user=bob, amount=Decimal("20"), reason="trial")
    wallet_debit(user=bob, amount=Decimal("0.12345678"), reference="turn-1")
    TopUpFactory(user=ann, amount_usd=Decimal("25.00"), status=TopUp.Status.SUCCEEDED)
    TopUpFactory(user=bob, amount_usd=Decimal("10.00"), status=TopUp.Status.REFUNDED)
    TopUpFactory(user=bob, amount_usd=Decimal("99.00"), status=TopUp.Status.FAILED)
    old = TopUpFactory(user=ann, amount_usd=Decimal("500.00"), status=TopUp.Status.SUCCEEDED)
    TopUp.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    today = selectors.today_utc()
    for user, alias, days_ago, credits in [
        (ann, "fast", 0, "1.5"), (ann, "smart", 0, "10"), (bob, "fast", 3, "2.25"), (bob, "fast", 6, "0.25"),
        (idle, "fast", 7, "100"),  # before the 7 days
    ]:  # fmt: skip
        UsageDaily.objects.create(
            day=today - timedelta(days=days_ago), user=user, model_alias=alias, calls=1, credits=Decimal(credits)
        )
    session = ChatSessionFactory(user=ann)
    TurnFactory(session=session)
    TurnFactory(session=session, status=Turn.Status.FAILED)
    TurnFactory(session=session, status=Turn.Status.FAILED)
    yesterday = TurnFactory(session=session, status=Turn.Status.FAILED)
    Turn.objects.filter(pk=yesterday.pk).update(created_at=timezone.now() - timedelta(hours=25))
    trigger(valid=True, processed=False, exception="KeyError: 'data'")
    trigger(valid=True, processed=False)
    trigger(valid=True, processed=True)
    trigger(valid=False, processed=False)
    TopUpEvent.objects.create(event_id="evt_1", type="charge.refunded", stripe_created=1, data={}, charge_id="ch_1")
    Upstream.objects.create(name="groq", kind="openai", base_url="https://api.groq.com/openai/v1")
    failure_record("groq", reason="rate_limited", message="429")
    return {"ann": ann, "bob": bob}


def cards(html: str) -> dict[str, str]:
    """Each card's text, by its key."""
    found = re.findall(r'<div class="card[^"]*" id="dashboard-([\w-]+)">(.*?)\n    </div>', html, re.S)
    return {key: " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split()) for key, body in found}


def figure_url(html: str, key: str) -> str:
    card = html.split(f'id="dashboard-{key}"', 1)[1]
    return unescape(re.search(r'class="figure[^"]*" href="([^"]+)"', card).group(1))


def test_the_figures_say_how_the_business_is_doing(settings):
    business(settings)
    assert selectors.credits_outstanding() == selectors.CreditsOutstanding(total=Decimal("120.37654322"), wallets=2)
    paid = selectors.top_ups_paid()
    assert (paid.count, paid.usd) == (2, Decimal("35.00"))
    spend = selectors.spend_by_model()
    assert (spend.today, spend.week) == (Decimal("11.5"), Decimal("14"))
    assert [(row.model_alias, row.today, row.week) for row in spend.by_model] == [
        ("smart", Decimal("10"), Decimal("10")), ("fast", Decimal("1.5"), Decimal("4")),
    ]  # fmt: skip
    assert selectors.active_users().count == 2
    turns = selectors.failing_turns()
    assert (turns.failed, turns.total) == (2, 3)
    assert selectors.stripe_events_waiting() == selectors.StripeWaiting(
        webhooks_failed=1, webhooks_waiting=1, events_pending=1
    )
    cooling = selectors.upstreams_cooling()
    assert cooling.cooling == ["groq"] and cooling.upstreams == 4  # groq and the three kinds' defaults


def test_an_empty_database_reads_zero_everywhere():
    assert selectors.credits_outstanding() == selectors.CreditsOutstanding(total=Decimal("0"), wallets=0)
    assert selectors.top_ups_paid().usd == Decimal("0")
    assert selectors.spend_by_model().by_model == []
    assert selectors.active_users().count == 0
    assert selectors.failing_turns().total == 0
    assert selectors.stripe_events_waiting().total == 0
    assert selectors.upstreams_cooling().cooling == []


def test_the_index_opens_on_the_dashboard_in_a_bounded_number_of_queries(
    console, settings, django_assert_max_num_queries
):
    business(settings)
    with django_assert_max_num_queries(DASHBOARD_QUERIES):
        html = console.get("/admin/").content.decode()
    shown = cards(html)
    assert list(shown) == ["credits", "top-ups", "spend", "active-users", "failing-turns", "stripe", "upstreams"]
    assert (
        "Credits outstanding 120.38 Owed to users: the sum of wallet balances (2 wallets above zero)."
        in shown["credits"]
    )
    assert shown["top-ups"].startswith("Top-ups, last 30 days $35.00 2 paid top-ups.")
    assert "Credits spent 11.50 today (UTC); 14.00 over 7 days." in shown["spend"]
    assert "smart 10.00 10.00 fast 1.50 4.00" in shown["spend"]
    assert shown["active-users"].startswith("Active users 2 Made at least one model call in the last 7 days")
    assert shown["failing-turns"] == "Failed turns, last 24 h 2 of 3 turns started."
    assert "Stripe events waiting 3" in shown["stripe"]
    assert "1 failed · 1 waiting · 1 top-up events pending" in shown["stripe"]
    assert shown["upstreams"].startswith("Upstreams cooling down 1 groq of 4;")
    # The sections are still there, below the figures.
    assert html.index('id="dashboard"') < html.index('class="app-parley-users module')

    # More rows cost no more queries.
    business_more(settings)
    with django_assert_max_num_queries(DASHBOARD_QUERIES):
        assert console.get("/admin/").status_code == 200


def business_more(settings) -> None:  # noqa: ANN001
    for n in range(5):
        user = make_user(f"more{n}@example.com")
        wallet_grant(user=user, amount=Decimal("1"), reason="trial")
        UsageDaily.objects.create(day=selectors.today_utc(), user=user, model_alias=f"m{n}", calls=1, credits=1)
        TurnFactory(session=ChatSessionFactory(user=user), status=Turn.Status.FAILED)


def test_each_figure_links_to_its_list_showing_the_same_rows(console, settings):
    business(settings)
    html = console.get("/admin/").content.decode()

    wallets = console.get(figure_url(html, "credits"))
    assert [row.pk for row in wallets.context["cl"].result_list][:2] == [
        Wallet.objects.get(user__email="ann@example.com").pk, Wallet.objects.get(user__email="bob@example.com").pk,
    ]  # fmt: skip
    top_ups = console.get(figure_url(html, "top-ups"))
    assert sorted(row.amount_usd for row in top_ups.context["cl"].result_list) == [Decimal("10.00"), Decimal("25.00")]
    turns = console.get(figure_url(html, "failing-turns"))
    assert turns.status_code == 200 and len(turns.context["cl"].result_list) == 2
    assert all(row.status == "failed" for row in turns.context["cl"].result_list)
    spend = console.get(figure_url(html, "spend"))
    assert spend.status_code == 200 and spend.context["summary"]["totals"]["credits"] == Decimal("11.5")
    active = console.get(figure_url(html, "active-users"))
    assert len(active.context["summary"]["by_user"]) == 2
    stripe = html.split('id="dashboard-stripe"', 1)[1]
    failed, waiting, events = (unescape(url) for url in re.findall(r'<a href="([^"]+)">\d', stripe)[:3])
    assert len(console.get(failed).context["cl"].result_list) == 1
    assert len(console.get(waiting).context["cl"].result_list) == 1
    assert [row.event_id for row in console.get(events).context["cl"].result_list] == ["evt_1"]
    assert console.get(figure_url(html, "upstreams")).status_code == 200


def test_staff_see_only_the_figures_of_lists_they_may_open(settings):
    business(settings)
    helpdesk = make_user("helpdesk@example.com", staff=True)
    for codename in ("view_usage", "view_turn"):
        helpdesk.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(helpdesk)
    html = client.get("/admin/").content.decode()
    assert list(cards(html)) == ["spend", "active-users", "failing-turns"]
    assert "120.38" not in html and "$35.00" not in html

    nobody = make_user("nobody@example.com", staff=True)
    client.force_login(nobody)
    html = client.get("/admin/").content.decode()
    assert 'id="dashboard"' not in html


def test_without_stripe_there_is_no_stripe_card(console, settings):
    business(settings)
    settings.STRIPE_SECRET_KEY = ""  # as dj-stripe's section, the card shows only when Stripe is on
    html = console.get("/admin/").content.decode()
    assert "stripe" not in cards(html) and "/admin/djstripe/" not in html
    assert "upstreams" in cards(html)
