"""Chat's raw SQL against the ORM: does each statement in chat/_sql.py earn its keep?

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/parley .venv/bin/python bench/sql_chat.py

It creates (and drops again) its own database `parley_bench_sqlchat`, seeds one user
with a session of HISTORY messages, one turn and no files (most users have none),
then times each statement of the turn hot path both ways in one process: CPU time
(time.process_time, this process only: what building and reading a query costs
Django) and wall time per call, CALLS calls each, interleaved in rounds so a busy
machine slows both alike. The rule (chat/_sql.py): raw SQL stays where it saves at
least 10% of the ORM path's CPU time.
"""

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

from bench.pg import recreate_database, server_url, with_database  # noqa: E402

BENCH_DB = "parley_bench_sqlchat"
HISTORY = 300


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per statement and path (default 1000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    return parser.parse_args()


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = with_database(url, BENCH_DB)
    os.environ.pop("REDIS_URL", None)  # nothing here publishes or sends a task
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ.setdefault("ALLOWED_HOSTS", "localhost")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Here, not at the top: the settings read DATABASE_URL, set just above.
    import django

    django.setup()


def measure(pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]], calls: int, rounds: int) -> list:
    """(statement, raw cpu, orm cpu, raw wall, orm wall) in microseconds per call."""
    per_round = max(calls // rounds, 1)
    totals = {name: [0.0, 0.0, 0.0, 0.0] for name in pairs}
    for round_ in range(rounds):
        for name, (raw, orm) in pairs.items():
            # Alternate which path goes first, so neither always runs on a warm cache.
            order = [(0, raw), (1, orm)] if round_ % 2 == 0 else [(1, orm), (0, raw)]
            for index, fn in order:
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(per_round):
                    fn()
                totals[name][index] += time.process_time() - cpu
                totals[name][2 + index] += time.perf_counter() - wall
    n = per_round * rounds
    return [(name, *(value / n * 1e6 for value in values)) for name, values in totals.items()]


def main() -> None:
    args = parse_args()
    url = server_url()
    recreate_database(url, BENCH_DB)
    try:
        setup_django(url)
        from django.core.management import call_command  # only after django.setup()

        call_command("migrate", verbosity=0)
        run(args)
    finally:
        from django.db import connections  # only after django.setup()

        connections.close_all()
        if not args.keep:
            recreate_database(url, BENCH_DB, drop_only=True)


def run(args: argparse.Namespace) -> None:
    # Imported here: Django and the project's models load only after setup_django().
    from django.db import transaction
    from django.db.models import Count, F, Q, Sum, Value
    from django.db.models.functions import Coalesce, Length
    from django.utils import timezone

    # Imported here, the same reason: after setup_django().
    from accounts import _sql as accounts_sql
    from accounts.models import ApiKey
    from accounts.services import api_key_create, hash_api_key, user_create
    from billing.models import ModelPrice
    from chat import _sql
    from chat.engine.context import HISTORY_FIELDS, context_rows
    from chat.models import ChatSession, Message, Turn, UploadedFile
    from chat.selectors import HISTORY_SCAN, session_history
    from core import rawsql

    user = user_create(email="bench@example.com")
    price = ModelPrice.objects.create(
        alias="fast", provider="local", provider_model="echo", input_credits_per_mtok=Decimal("1"),
        output_credits_per_mtok=Decimal("2"),
    )  # fmt: skip
    session = ChatSession.objects.create(user=user, model_alias=price.alias)
    turn = Turn.objects.create(session=session, user=user, model_alias=price.alias, price=price)
    Message.objects.bulk_create(
        Message(session=session, turn=turn, role=Message.Role.USER, content="x" * (20 + n % 400))
        for n in range(HISTORY)
    )
    # A turn after that history, its context read as a run reads it.
    Turn.objects.filter(pk=turn.pk).update(status=Turn.Status.COMPLETED)
    later = Turn.objects.create(session=session, user=user, model_alias=price.alias, price=price)
    Message.objects.create(session=session, turn=later, role=Message.Role.USER, content="the question")

    _, raw_key = api_key_create(user=user, name="bench")
    key_hash = hash_api_key(raw_key)

    def orm_api_key() -> tuple:
        api_key = (
            ApiKey.objects.select_related("user")
            .filter(key_hash=key_hash, revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        return api_key.pk, api_key.user.pk

    def raw_api_key() -> tuple:
        api_key = accounts_sql.api_key_for_hash(key_hash=key_hash)
        return api_key.pk, api_key.user.pk

    def orm_turn_brief() -> Turn | None:
        query = Turn.objects.filter(pk=turn.pk, user=user, session__deleted_at__isnull=True)
        return query.only("id", "status").first()

    def orm_session_get() -> ChatSession | None:
        return ChatSession.objects.filter(pk=session.pk, user_id=user.pk, deleted_at__isnull=True).first()

    def orm_turn_status() -> str | None:
        return Turn.objects.filter(pk=turn.pk).values_list("status", flat=True).first()

    def locked(fn: Callable[[], object]) -> Callable[[], object]:
        def inside() -> object:
            with transaction.atomic():
                return fn()

        return inside

    def orm_turn_lock() -> tuple:
        return Turn.objects.select_for_update().filter(pk=turn.pk).values_list("status", "lease_token").first()

    # Lapsed leases, so that every claim succeeds and both paths write.
    token, lapsed = uuid.uuid4(), timezone.now() - timedelta(seconds=1)

    def orm_turn_start() -> bool:
        takeable = Q(status=Turn.Status.QUEUED) | Q(
            Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=timezone.now()), status=Turn.Status.RUNNING
        )
        return bool(
            Turn.objects.filter(takeable, pk=turn.pk).update(
                status=Turn.Status.RUNNING,
                started_at=Coalesce("started_at", Value(timezone.now())),
                attempts=F("attempts") + 1,
                lease_token=token,
                lease_expires_at=lapsed,
            )  # fmt: skip
        )

    def orm_history_size() -> tuple[int, int]:
        totals = (
            session_history(session=session)
            .values("content")[:HISTORY_SCAN]
            .aggregate(count=Count("*"), chars=Sum(Length("content")))
        )
        return totals["count"] or 0, totals["chars"] or 0

    def orm_user_has_files() -> bool:
        return UploadedFile.objects.filter(owner_id=user.pk).exists()

    def orm_turns_in_flight() -> int:
        return Turn.objects.filter(user=user, status__in=(Turn.Status.QUEUED, Turn.Status.RUNNING)).count()

    def orm_turn_for_run() -> tuple:
        found = Turn.objects.select_related("session", "user", "price").get(pk=turn.pk)
        return found, found.session, found.user, found.price

    def raw_turn_for_run() -> tuple:
        found = _sql.turn_for_run(turn_id=turn.pk)
        return found, found.session, found.user, found.price

    def orm_context_rows() -> tuple:
        own = list(Message.objects.filter(turn=later).order_by("id"))
        history = session_history(session=session, before_message_id=own[0].id).filter(
            turn__status=Turn.Status.COMPLETED
        )
        return own, list(history.values(*HISTORY_FIELDS)[:HISTORY_SCAN])

    def raw_context_rows() -> tuple:
        rows = context_rows(turn=later)
        return rows.own, rows.history

    def new_turn() -> Turn:
        return Turn(session=session, user=user, model_alias=price.alias, price=price, dispatched_at=timezone.now())

    def orm_accept() -> None:  # the accepted turn and its message, as Model.objects.create wrote them
        accepted = Turn.objects.create(
            session=session, user=user, model_alias=price.alias, price=price, dispatched_at=timezone.now()
        )
        Message.objects.create(session=session, turn=accepted, role=Message.Role.USER, content="q")

    def raw_accept() -> None:
        accepted = new_turn()
        rawsql.insert([accepted])
        rawsql.insert([Message(session=session, turn=accepted, role=Message.Role.USER, content="q")])

    finished = ["status", "error", "credits_charged", "balance_after", "low_balance", "finished_at"]

    def finish(update: Callable[[Turn], None]) -> Callable[[], None]:
        def call() -> None:
            turn.status, turn.finished_at, turn.credits_charged = Turn.Status.COMPLETED, timezone.now(), Decimal("1")
            update(turn)

        return call

    pairs = {
        "api_key_for_hash (every request's auth)": (raw_api_key, orm_api_key),
        "session_get (POST turns)": (lambda: _sql.session_get(user_id=user.pk, session_id=session.pk), orm_session_get),
        "turn_brief (GET stream)": (lambda: _sql.turn_brief(user_id=user.pk, turn_id=turn.pk), orm_turn_brief),
        "turn_status (waiting check)": (lambda: _sql.turn_status(turn_id=turn.pk, lock=False), orm_turn_status),
        "turn_lock (completion)": (
            locked(lambda: tuple(_sql.turn_lock(turn_id=turn.pk))),
            locked(orm_turn_lock),
        ),
        "turn_start (worker claim)": (
            lambda: _sql.turn_start(turn_id=turn.pk, lease_token=token, lease_expires_at=lapsed),
            orm_turn_start,
        ),
        "session_history_size (hold)": (
            lambda: _sql.session_history_size(session=session, scan=HISTORY_SCAN),
            orm_history_size,
        ),  # fmt: skip
        "turns_in_flight (fair use)": (lambda: _sql.turns_in_flight(user_id=user.pk), orm_turns_in_flight),
        "user_has_files (hold, run)": (lambda: _sql.user_has_files(user_id=user.pk), orm_user_has_files),
        "turn_for_run (worker's turn)": (raw_turn_for_run, orm_turn_for_run),
        "context_rows (a run's context)": (raw_context_rows, orm_context_rows),
        "insert turn + message (POST turns)": (raw_accept, orm_accept),
        "update finished turn (completion)": (
            finish(lambda t: rawsql.update(t, finished)),
            finish(lambda t: t.save(update_fields=finished)),
        ),
    }
    for name, (raw, orm) in pairs.items():  # both paths answer the same, or the timing means nothing
        assert raw() == orm() or name.startswith(("turn_start", "insert", "update")), name
    rows = measure(pairs, args.calls, args.rounds)
    print(f"{args.calls} calls per path, {args.rounds} interleaved rounds; microseconds per call")
    print(f"{'statement':40} {'raw cpu':>8} {'orm cpu':>8} {'saved':>6} {'raw wall':>9} {'orm wall':>9} {'saved':>6}")
    for name, raw_cpu, orm_cpu, raw_wall, orm_wall in rows:
        print(
            f"{name:40} {raw_cpu:8.1f} {orm_cpu:8.1f} {1 - raw_cpu / orm_cpu:6.0%} "
            f"{raw_wall:9.1f} {orm_wall:9.1f} {1 - raw_wall / orm_wall:6.0%}"
        )


if __name__ == "__main__":
    main()
