import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.models import EndUser
from accounts.services import api_key_create
from billing.money import call_cost, ledger_amount, usage_amount
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.conftest import make_user
from tests.reporting.factories import CallSpec, record_turn


@dataclass(frozen=True)
class Recorded:
    """One generated call as the test knows it, independent of the code under test."""

    user_id: int
    email: str
    alias: str
    at: datetime
    input_tokens: int
    output_tokens: int
    credits: Decimal
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    end_user_id: int | None = None
    external_id: str | None = None
    api_key_name: str | None = None
    purpose: str = ""
    # A turn through an organization's key (user_id/email are then the organization's account's).
    membership_id: int | None = None
    member_email: str | None = None
    organization_id: int | None = None
    organization_name: str | None = None
    organization_slug: str | None = None

    @property
    def day(self) -> date:
        return self.at.astimezone(UTC).date()


def _at(y: int, m: int, d: int, hh: int = 12, mm: int = 0, ss: int = 0, us: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, us, tzinfo=UTC)


# Times right at the edges the summary must split correctly: year, month, ISO week, day.
EDGE_TIMES = [
    _at(2024, 12, 31, 23, 59, 59, 999999),
    _at(2025, 1, 1, 0, 0, 0, 0),
    _at(2025, 1, 5, 23, 59, 59, 999999),  # Sunday
    _at(2025, 1, 6, 0, 0, 0, 0),  # Monday
    _at(2025, 1, 31, 23, 59, 59, 999999),
    _at(2025, 2, 1, 0, 0, 0, 0),
    _at(2025, 2, 28, 23, 59, 59, 999999),
    _at(2025, 3, 1, 0, 0, 0, 1),
]
START = _at(2024, 12, 20)
SPAN_SECONDS = int((_at(2025, 3, 10) - START).total_seconds())


@pytest.fixture
def usage_data(db) -> dict:  # noqa: ANN001
    """~150 turns of 1-4 calls by three users over three aliases from 2024-12-20 to
    2025-03-10, including a price change and turns whose calls straddle midnight."""
    rng = random.Random(20250101)
    users = [make_user(f"user{i}@example.com") for i in range(3)]
    sessions = {user.pk: ChatSessionFactory(user=user) for user in users}
    fast_v1 = ModelPriceFactory(
        alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600")
    )
    prices = {
        "fast": fast_v1,
        "smart": ModelPriceFactory(
            alias="smart", input_credits_per_mtok=Decimal("3000"), output_credits_per_mtok=Decimal("15000")
        ),
        "tiny": ModelPriceFactory(
            alias="tiny", input_credits_per_mtok=Decimal("0.37"), output_credits_per_mtok=Decimal("1.11")
        ),
    }
    # Two end users on user0's key and one on user1's (one external id on both keys),
    # and the labels a front end gives its background requests.
    keys = {user.pk: api_key_create(user=user, name=f"key{i}")[0] for i, user in enumerate(users)}
    end_users = {
        users[0].pk: [EndUser.objects.create(api_key=keys[users[0].pk], external_id=name) for name in ("ada", "bob")],
        users[1].pk: [EndUser.objects.create(api_key=keys[users[1].pk], external_id="ada")],
        users[2].pk: [],
    }
    recorded: list[Recorded] = []

    def turn(user, specs: list[CallSpec]) -> None:  # noqa: ANN001
        end_user = rng.choice([None, *end_users[user.pk]])
        purpose = rng.choice(["", "", "title", "tags"])
        record_turn(session=sessions[user.pk], calls=specs, end_user=end_user, purpose=purpose)
        labels = {
            "end_user_id": end_user.pk if end_user else None, "external_id": end_user.external_id if end_user else None,
            "api_key_name": end_user.api_key.name if end_user else None, "purpose": purpose,
        }  # fmt: skip
        for spec in specs:
            price = prices[spec.alias]
            cost = ledger_amount(
                call_cost(
                    input_tokens=spec.input_tokens,
                    output_tokens=spec.output_tokens,
                    input_price=price.input_credits_per_mtok,
                    output_price=price.output_credits_per_mtok,
                )
            )
            recorded.append(
                Recorded(
                    user.pk, user.email, spec.alias, spec.at, spec.input_tokens, spec.output_tokens, usage_amount(cost),
                    spec.cached_input_tokens, spec.cache_write_tokens, spec.reasoning_tokens, **labels,
                )
            )  # fmt: skip

    def random_spec(at: datetime) -> CallSpec:
        # Token classes as parts of the totals (the prices here have no class prices, so
        # the cost above, all input at the input price, is what the call is charged).
        tokens_in, tokens_out = rng.randint(0, 9000), rng.randint(0, 3000)
        cached = rng.randint(0, tokens_in)
        written = rng.randint(0, tokens_in - cached)
        return CallSpec(
            rng.choice(list(prices)), at, tokens_in, tokens_out,
            cached_input_tokens=cached, cache_write_tokens=written, reasoning_tokens=rng.randint(0, tokens_out),
        )  # fmt: skip

    for index in range(150):
        if index == 75:  # a price change: later "fast" calls are charged at the new price
            fast_v1.active = False
            fast_v1.save(update_fields=["active"])
            prices["fast"] = ModelPriceFactory(
                alias="fast", input_credits_per_mtok=Decimal("210.5"), output_credits_per_mtok=Decimal("840.25")
            )
        user = rng.choice(users)
        first = START + timedelta(seconds=rng.randrange(SPAN_SECONDS))
        turn(user, [random_spec(first + timedelta(seconds=7 * n)) for n in range(rng.randint(1, 4))])
    for at in EDGE_TIMES:
        turn(rng.choice(users), [random_spec(at)])
    # One turn whose calls fall on both sides of midnight.
    turn(users[0], [random_spec(_at(2025, 1, 14, 23, 59, 59, 900000)), random_spec(_at(2025, 1, 15, 0, 0, 0, 100000))])
    return {"users": users, "recorded": recorded, "prices": prices, "end_users": end_users}
