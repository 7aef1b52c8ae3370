import threading
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from chat.models import LLMCall
from reporting.models import UsageDaily
from reporting.selectors import usage_summary, usage_summary_from_calls
from reporting.services import usage_rollup_add, usage_rollups_rebuild
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.conftest import make_user
from tests.reporting.factories import CallSpec, record_turn

NOON = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)


def rollup_rows(*figures: str) -> list[tuple]:
    figures = figures or ("calls", "input_tokens", "output_tokens", "credits")
    return sorted(UsageDaily.objects.values_list("day", "user_id", "model_alias", *figures))


CLASSES = ("cached_input_tokens", "cache_write_tokens", "reasoning_tokens")


@pytest.fixture
def fast(db):  # noqa: ANN001, ANN201
    # 150 credits per million input tokens, 600 per million output tokens.
    return ModelPriceFactory(
        alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600")
    )


@pytest.mark.django_db
def test_turns_add_up_in_their_day_user_alias_row(owner, fast):
    session = ChatSessionFactory(user=owner)
    record_turn(session=session, calls=[CallSpec("fast", NOON, 1000, 200), CallSpec("fast", NOON, 333, 77)])
    record_turn(session=session, calls=[CallSpec("fast", NOON.replace(hour=23, minute=59), 1, 1)])
    # 1000*150/1e6 + 200*600/1e6 = 0.27; 333*150/1e6 + 77*600/1e6 = 0.09615 -> 0.0962 (half up)
    # 1*150/1e6 + 1*600/1e6 = 0.00075 -> 0.0008
    assert rollup_rows() == [(date(2025, 1, 10), owner.pk, "fast", 3, 1334, 278, Decimal("0.3670"))]


@pytest.mark.django_db
def test_token_classes_add_up_in_the_rollup_row_like_the_totals(owner, fast):
    session = ChatSessionFactory(user=owner)
    record_turn(
        session=session,
        calls=[
            CallSpec("fast", NOON, 1000, 200, cached_input_tokens=600, cache_write_tokens=300, reasoning_tokens=150),
            CallSpec("fast", NOON, 50, 40, reasoning_tokens=40),
        ],
    )
    record_turn(session=session, calls=[CallSpec("fast", NOON, 7, 3, cached_input_tokens=7)])
    assert rollup_rows("calls", "input_tokens", *CLASSES, "output_tokens") == [
        (date(2025, 1, 10), owner.pk, "fast", 3, 1057, 607, 300, 190, 243)
    ]
    assert usage_summary() == usage_summary_from_calls()


@pytest.mark.django_db
def test_a_rebuild_recomputes_the_token_classes_from_the_raw_calls(owner, fast):
    record_turn(
        session=ChatSessionFactory(user=owner),
        calls=[CallSpec("fast", NOON, 900, 90, cached_input_tokens=500, cache_write_tokens=100, reasoning_tokens=60)],
    )
    truth = rollup_rows("calls", "input_tokens", *CLASSES, "output_tokens", "credits")
    assert truth[0][3:] == (1, 900, 500, 100, 60, 90, truth[0][-1])
    UsageDaily.objects.update(cached_input_tokens=0, cache_write_tokens=9, reasoning_tokens=12345)  # drift
    assert usage_rollups_rebuild() == 1
    assert rollup_rows("calls", "input_tokens", *CLASSES, "output_tokens", "credits") == truth


@pytest.mark.django_db
def test_the_same_call_listed_twice_counts_once(owner, fast):
    calls = record_turn(session=ChatSessionFactory(user=owner), calls=[CallSpec("fast", NOON, 10, 10)], rollup=False)
    usage_rollup_add(llm_calls=[calls[0], calls[0]])
    assert rollup_rows() == [(date(2025, 1, 10), owner.pk, "fast", 1, 10, 10, Decimal("0.0075"))]


@pytest.mark.django_db
def test_unsaved_calls_are_refused_and_nothing_is_written(owner, fast):
    with pytest.raises(ValueError, match="saved"):
        usage_rollup_add(llm_calls=[LLMCall(user=owner, model_alias="fast", input_tokens=5)])
    usage_rollup_add(llm_calls=[])
    assert UsageDaily.objects.count() == 0


@pytest.mark.django_db
def test_a_rolled_back_completion_leaves_no_rollup(owner, fast):
    session = ChatSessionFactory(user=owner)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        record_turn(session=session, calls=[CallSpec("fast", NOON, 100, 100)])
        assert UsageDaily.objects.count() == 1
        raise Boom
    assert UsageDaily.objects.count() == 0
    assert LLMCall.objects.count() == 0


@pytest.mark.django_db
def test_rebuild_recomputes_only_its_range_from_the_raw_calls(owner, other_user, fast):
    for user in (owner, other_user):
        session = ChatSessionFactory(user=user)
        for day in (9, 10, 11, 12):
            record_turn(session=session, calls=[CallSpec("fast", NOON.replace(day=day), 1000 * day, 10 * day)])
    truth = rollup_rows()
    # Drift: a lost row, a wrong figure, a row for a day without calls.
    UsageDaily.objects.filter(day=date(2025, 1, 10), user=owner).delete()
    UsageDaily.objects.filter(day=date(2025, 1, 11)).update(calls=99, credits=Decimal("1234.5678"))
    UsageDaily.objects.create(day=date(2025, 1, 10), user=other_user, model_alias="ghost", calls=5)
    UsageDaily.objects.filter(day=date(2025, 1, 12)).update(calls=42)  # outside the range below

    written = usage_rollups_rebuild(from_date=date(2025, 1, 10), to_date=date(2025, 1, 11))

    assert written == 4
    rows = rollup_rows()
    assert [r for r in rows if r[0] != date(2025, 1, 12)] == [r for r in truth if r[0] != date(2025, 1, 12)]
    assert {r[3] for r in rows if r[0] == date(2025, 1, 12)} == {42}  # untouched outside the range

    call_command("rebuild_usage_rollups")
    assert rollup_rows() == truth
    assert usage_summary() == usage_summary_from_calls()


@pytest.mark.django_db
def test_rebuild_command_takes_a_range_and_reports(owner, fast, capsys):
    record_turn(session=ChatSessionFactory(user=owner), calls=[CallSpec("fast", NOON, 5, 5)])
    UsageDaily.objects.all().delete()
    call_command("rebuild_usage_rollups", "--from", "2025-01-10", "--to", "2025-01-10")
    assert "1 rollup row" in capsys.readouterr().out
    # 5*150/1e6 + 5*600/1e6 = 0.00375 -> 0.0038 (half up)
    assert rollup_rows() == [(date(2025, 1, 10), owner.pk, "fast", 1, 5, 5, Decimal("0.0038"))]


@pytest.mark.django_db
def test_rebuild_command_rejects_a_reversed_range(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--from"):
        call_command("rebuild_usage_rollups", "--from", "2025-02-01", "--to", "2025-01-01")
    with pytest.raises(CommandError, match="--to"):
        call_command("rebuild_usage_rollups", "--to", "2025-13-01")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_turns_on_the_same_rollup_row_lose_no_update(fast):
    """Turns completing at once for the same (day, user, alias) row, the first ones
    racing to create it: every call is counted once."""
    user = make_user("busy@example.com")
    session = ChatSessionFactory(user=user)
    threads, errors = 8, []
    barrier = threading.Barrier(threads)

    def complete(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(5):
                record_turn(
                    session=session,
                    calls=[
                        CallSpec(
                            "fast", NOON, 1000 + n, 100, cached_input_tokens=500, cache_write_tokens=20,
                            reasoning_tokens=30,
                        )
                    ],
                )  # fmt: skip
        except Exception as exc:  # reported below; a thread cannot fail the test itself
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=complete, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    assert LLMCall.objects.count() == 40
    assert usage_summary() == usage_summary_from_calls()
    row = UsageDaily.objects.get()
    assert (row.calls, row.input_tokens, row.output_tokens) == (40, 5 * sum(1000 + n for n in range(8)), 4000)
    assert (row.cached_input_tokens, row.cache_write_tokens, row.reasoning_tokens) == (40 * 500, 40 * 20, 40 * 30)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_rebuild_during_concurrent_turns_counts_each_call_once(fast):
    user = make_user("busy@example.com")
    session = ChatSessionFactory(user=user)
    stop, errors = threading.Event(), []

    def keep_completing() -> None:
        try:
            while not stop.is_set():
                record_turn(
                    session=session,
                    calls=[
                        CallSpec("fast", NOON, 10, 10, cached_input_tokens=4, reasoning_tokens=2),
                        CallSpec("fast", NOON, 1, 1),
                    ],
                )
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=keep_completing) for _ in range(3)]
    for worker in workers:
        worker.start()
    for _ in range(30):
        usage_rollups_rebuild(from_date=date(2025, 1, 10), to_date=date(2025, 1, 10))
    stop.set()
    for worker in workers:
        worker.join(60)
    assert errors == []
    assert LLMCall.objects.count() > 0
    assert usage_summary() == usage_summary_from_calls()
