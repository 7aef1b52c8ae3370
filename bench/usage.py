"""Usage summary benchmark: the summary served from the daily rollups against the same
summary aggregated from the raw LLM calls, over 1M and 10M calls, results compared for
equality; and what keeping the rollups current costs the turn completion.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/parley .venv/bin/python bench/usage.py --rows 1000000
    DATABASE_URL=... .venv/bin/python bench/usage.py --rows 10000000 --skip-write   # later, in the background

It uses its own database `parley_bench_usage` on that server (created and migrated on
first use, kept between runs so the 10M run only adds the missing calls; `--fresh`
starts over). Calls are generated in PostgreSQL with INSERT ... SELECT generate_series
over 1000 users, 5 aliases and 90 days (each batch in time order, as a live system
inserts them; call g has user g mod 1000 and alias (g div 3) mod 5, so each user calls
3 of the 5 aliases: 270,000 (day, user, alias) rollup rows for the 90 days, about 37
calls per rollup row at 10M), the rollups are rebuilt with `usage_rollups_rebuild`, then:

1. summary of February 2025 (bucket=day) for one user, for one alias and overall:
   reporting.selectors.usage_summary (rollups) against usage_summary_from_calls (raw),
   median of --repeat runs each, answers compared for equality. Goal: rollup >= 20x
   faster than raw at 10M calls.
2. write path, N turns each: the completion's writes in one transaction (LLM calls,
   and in the "completion" variant also the assistant message, the debit through
   billing.services and the turn update) with and without usage_rollup_add, in
   alternating blocks of 25 turns; the ratio is the median over block pairs, so load
   from other processes on a shared machine hits both sides alike. Goal: the rollup
   costs at most 10% of turn throughput.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

from bench.pg import admin_connection, server_url, with_database  # noqa: E402

BENCH_DB = "parley_bench_usage"
START = datetime(2025, 1, 1, tzinfo=UTC)
DAYS = 90
MONTH = (date(2025, 2, 1), date(2025, 2, 28))
BATCH = 1_000_000
BLOCK = 25  # turns per block in the write-path measurement
TURNS = 100_000  # calls point at these turns round-robin (call g -> turn g mod TURNS)
ALIAS_PRICES = [  # credits per million input / output tokens
    ("fast", Decimal("150"), Decimal("600")),
    ("smart", Decimal("3000"), Decimal("15000")),
    ("tiny", Decimal("0.37"), Decimal("1.11")),
    ("vision", Decimal("2500"), Decimal("10000")),
    ("reasoning", Decimal("15000"), Decimal("60000")),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="LLM calls in the table (default 1M)")
    parser.add_argument("--users", type=int, default=1000, help="users the calls are spread over (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per summary (median; default 5)")
    parser.add_argument("--write-turns", type=int, default=3000, help="turns per write-path variant (default 3000)")
    parser.add_argument("--skip-write", action="store_true", help="skip the write-path measurement")
    parser.add_argument("--skip-summary", action="store_true", help="skip the summary measurement")
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the benchmark database first")
    return parser.parse_args()


def ensure_database(url: str, *, fresh: bool) -> None:
    with admin_connection(url) as c:
        if fresh:
            c.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone():
            c.execute(f"CREATE DATABASE {BENCH_DB}")


def setup_django(url: str) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = with_database(url, BENCH_DB)
    os.environ.pop("REDIS_URL", None)  # nothing here sends a task
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ.setdefault("ALLOWED_HOSTS", "localhost")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Imported once Django is set up (django.setup() above): models need the app registry.
    import django

    django.setup()
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- data ----------------------------------------------------------------------


def ensure_fixtures(users: int) -> None:
    """Users, prices, one session per user and TURNS turns, plus two lookup tables the
    generator joins: turn number -> (turn id, user id), alias number -> price."""
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from django.db import connection, transaction

    # Imported once Django is set up (django.setup() above): models need the app registry.
    from accounts.models import User
    from billing.models import ModelPrice
    from chat.models import ChatSession, Turn

    if _table_exists("bench_turn_map"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM bench_turn_map")
            if cursor.fetchone()[0] == TURNS:
                return
    log(f"fixtures: {users} users, {len(ALIAS_PRICES)} prices, {TURNS} turns")
    with transaction.atomic():
        people = User.objects.bulk_create(
            [User(email=f"bench{n}@example.com", password="!") for n in range(users)], batch_size=5000
        )
        for alias, price_in, price_out in ALIAS_PRICES:
            ModelPrice.objects.create(
                alias=alias,
                provider="local",
                provider_model=f"local-{alias}",
                input_credits_per_mtok=price_in,
                output_credits_per_mtok=price_out,
            )
        sessions = ChatSession.objects.bulk_create(
            [ChatSession(user=user, title="bench", model_alias="fast") for user in people], batch_size=5000
        )
        # Turn n belongs to user n mod users, so call g (turn g mod TURNS) has user g mod users.
        turns = [
            Turn(session=sessions[n % users], user=people[n % users], model_alias="fast", status="completed")
            for n in range(TURNS)
        ]
        Turn.objects.bulk_create(turns, batch_size=5000)
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS bench_turn_map")
            cursor.execute("CREATE TABLE bench_turn_map (n int PRIMARY KEY, id uuid NOT NULL, user_id bigint NOT NULL)")
            with cursor.copy("COPY bench_turn_map (n, id, user_id) FROM STDIN") as copy:
                for n, turn in enumerate(turns):
                    copy.write_row((n, turn.pk, turn.user_id))
            cursor.execute("DROP TABLE IF EXISTS bench_price_map")
            cursor.execute(
                "CREATE TABLE bench_price_map AS SELECT (row_number() OVER (ORDER BY id) - 1)::int AS n, id AS price_id,"
                " alias, provider, provider_model, input_credits_per_mtok AS in_price,"
                " output_credits_per_mtok AS out_price FROM billing_modelprice WHERE active"
            )
            cursor.execute("DROP TABLE IF EXISTS bench_state")
            cursor.execute("CREATE TABLE bench_state (generated bigint NOT NULL)")
            cursor.execute("INSERT INTO bench_state VALUES (0)")


def _table_exists(name: str) -> bool:
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from django.db import connection

    return name in connection.introspection.table_names()


# Every chat_llmcall column of a generated call. `s.g` is the call number, `s.tin` and
# `s.tout` its tokens, `t` its turn, `p` its price. Cost is rounded up at the 8th place
# (the ledger rule), credits_burned half up at the 4th, as billing.money does.
CALL_COLUMNS = {
    "turn_id": "t.id",
    "user_id": "t.user_id",
    "price_id": "p.price_id",
    "purpose": "'reply'",
    "model_alias": "p.alias",
    "provider": "p.provider",
    "provider_model": "p.provider_model",
    "input_tokens": "s.tin",
    "output_tokens": "s.tout",
    "cost": "ceil((s.tin * p.in_price + s.tout * p.out_price) * 100) / 100000000",
    "credits_burned": "round(ceil((s.tin * p.in_price + s.tout * p.out_price) * 100) / 100000000, 4)",
    "latency_ms": "100 + mod(s.g, 900)",
    "status": "'ok'",
    "used_fallback": "false",
    "created_at": "s.at",
}


def generate_calls(target: int) -> None:
    """Adds calls until the table holds `target` generated calls. Each run's new calls
    cover the 90 days in time order (a run adding 9M after 1M interleaves with them)."""
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from django.db import connection, transaction

    # Imported once Django is set up (django.setup() above): models need the app registry.
    from chat.models import LLMCall

    with connection.cursor() as cursor:
        cursor.execute("SELECT generated FROM bench_state")
        have = cursor.fetchone()[0]
    if have >= target:
        log(f"{have:,} generated calls already there")
        return
    first, last = have + 1, target
    span_us = DAYS * 86_400 * 1_000_000
    columns, expressions, params = [], [], []
    for field in LLMCall._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(field.column)
        if field.column in CALL_COLUMNS:
            expressions.append(CALL_COLUMNS[field.column])
        else:  # a column added after this benchmark was written: its model default
            expressions.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
    log(f"generating calls {first:,}..{last:,}")
    started = time.perf_counter()
    for low in range(first, last + 1, BATCH):
        high = min(low + BATCH - 1, last)
        sql = (
            f"INSERT INTO chat_llmcall ({', '.join(columns)}) "  # noqa: S608  names from the model, values bound
            f"SELECT {', '.join(expressions)} FROM ("
            "  SELECT g, 50 + mod(g * 37, 4000) AS tin, 10 + mod(g * 91, 1200) AS tout,"
            "         %s::timestamptz + make_interval(secs => ((g - %s)::numeric * %s / %s / 1000000)::float8) AS at"
            "  FROM generate_series(%s::bigint, %s::bigint) AS g) s"
            f" JOIN bench_turn_map t ON t.n = mod(s.g, {TURNS})"
            f" JOIN bench_price_map p ON p.n = mod(s.g / 3, {len(ALIAS_PRICES)})"
        )
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")
            cursor.execute(sql, [*params, START, first, span_us, last - first + 1, low, high])
            cursor.execute("UPDATE bench_state SET generated = %s", [high])
        log(f"  ... {high:,} calls ({time.perf_counter() - started:.0f} s)")


def rebuild_rollups() -> float:
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from django.db import connection

    # Imported once Django is set up (django.setup() above): models need the app registry.
    from reporting.services import usage_rollups_rebuild

    started = time.perf_counter()
    written = usage_rollups_rebuild()
    took = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE chat_llmcall")
        cursor.execute("VACUUM ANALYZE reporting_usagedaily")
    log(f"rollups rebuilt from the raw calls: {written:,} rows in {took:.1f} s")
    return took


# --- measurements ------------------------------------------------------------------


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    fn()  # warm the caches: both paths are measured warm
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def measure_summaries(repeat: int) -> list[dict]:
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from accounts.models import User
    from reporting.selectors import usage_summary, usage_summary_from_calls

    one_user = User.objects.get(email="bench42@example.com").pk
    scenarios = [
        ("one user", {"user_id": one_user}),
        ("one alias", {"model_alias": "smart"}),
        ("overall", {}),
    ]
    results = []
    for name, scope in scenarios:
        filters = {**scope, "from_date": MONTH[0], "to_date": MONTH[1], "bucket": "day"}
        rollup_s, from_rollups = timed(lambda f=filters: usage_summary(**f), repeat)
        raw_s, from_calls = timed(lambda f=filters: usage_summary_from_calls(**f), repeat)
        equal = from_rollups == from_calls
        results.append(
            {
                "scenario": name,
                "calls": from_calls["totals"]["calls"],
                "rollup_ms": rollup_s * 1000,
                "raw_ms": raw_s * 1000,
                "speedup": raw_s / rollup_s,
                "equal": equal,
            }
        )
        log(f"{name}: rollup {rollup_s * 1000:.1f} ms, raw {raw_s * 1000:.1f} ms, equal={equal}")
    return results


def measure_write_path(turns: int) -> list[dict]:
    """Turns per second through the completion's writes with and without the rollup
    update, in alternating blocks of BLOCK turns; the reported ratio is the median of
    the per-pair ratios (robust to bursts of load from other processes)."""
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from django.db import transaction

    # Imported once Django is set up (django.setup() above): models need the app registry.
    from accounts.models import User
    from billing.models import ModelPrice
    from billing.money import call_cost, ledger_amount, usage_amount
    from billing.services import wallet_debit
    from chat.models import ChatSession, LLMCall, Message, Turn
    from reporting.services import usage_rollup_add

    price = ModelPrice.objects.get(alias="fast", active=True)
    users = list(User.objects.filter(email__startswith="bench").order_by("pk")[:50])
    sessions = {s.user_id: s for s in ChatSession.objects.filter(user__in=users)}

    def new_turns(count: int) -> list[Turn]:
        return Turn.objects.bulk_create(
            [
                Turn(session=sessions[users[n % len(users)].pk], user=users[n % len(users)], model_alias="fast")
                for n in range(count)
            ],
            batch_size=2000,
        )

    def calls_for(turn: Turn) -> list[LLMCall]:
        rows = []
        for purpose, tokens_in, tokens_out in (("reply", 1200, 300), ("summary", 3000, 200)):
            cost = ledger_amount(
                call_cost(
                    input_tokens=tokens_in,
                    output_tokens=tokens_out,
                    input_price=price.input_credits_per_mtok,
                    output_price=price.output_credits_per_mtok,
                )
            )
            rows.append(
                LLMCall(
                    turn=turn, user_id=turn.user_id, price=price, purpose=purpose, model_alias="fast",
                    provider="local", provider_model=price.provider_model, input_tokens=tokens_in,
                    output_tokens=tokens_out, cost=cost, credits_burned=usage_amount(cost),
                )
            )  # fmt: skip
        return rows

    def calls_only(turn: Turn, rollup: bool) -> None:
        with transaction.atomic():
            created = LLMCall.objects.bulk_create(calls_for(turn))
            if rollup:
                usage_rollup_add(llm_calls=created)

    def completion(turn: Turn, rollup: bool) -> None:
        with transaction.atomic():
            Message.objects.create(session_id=turn.session_id, turn=turn, role="assistant", content="x" * 400)
            created = LLMCall.objects.bulk_create(calls_for(turn))
            total = sum((call.cost for call in created), Decimal("0"))
            wallet_debit(user=turn.user, amount=total, reference=str(turn.pk), reason="bench turn")
            Turn.objects.filter(pk=turn.pk).update(status="completed", credits_charged=total)
            if rollup:
                usage_rollup_add(llm_calls=created)

    variants: list[tuple[str, Callable]] = [("LLM calls only", calls_only), ("completion", completion)]
    try:
        # Imported once Django is set up (django.setup() above): models need the app registry.
        from chat import services as chat_services

        def whole_turn(turn: Turn, rollup: bool) -> None:
            """A real turn through chat.services: turn_create commits the turn and its
            hold, the (eager) run_turn task builds the context, calls the offline
            `local` provider and completes the turn, whose completion transaction calls
            usage_rollup_add; for "without" that one call is switched off."""
            chat_services.usage_rollup_add = usage_rollup_add if rollup else (lambda **kwargs: None)
            try:
                created, _ = chat_services.turn_create(
                    user=turn.user, session=turn.session, content="How many tokens is this?", model_alias="fast"
                )
            finally:
                chat_services.usage_rollup_add = usage_rollup_add
            if Turn.objects.get(pk=created.pk).status != Turn.Status.COMPLETED:
                raise RuntimeError(f"turn {created.pk} did not complete")

        variants.append(("turn (chat.services)", whole_turn))
    except ImportError as exc:  # the chat flow's API changed: measure what can be measured
        log(f"whole-turn variant skipped: {exc}")

    results = []
    for name, write in variants:
        if name.startswith("turn"):
            # A fresh session per block and side keeps every turn's context the same
            # size; the unsaved Turn objects only carry the session and user to use.
            blocks = -(-turns // BLOCK)
            fresh = ChatSession.objects.bulk_create(
                [ChatSession(user=users[n % len(users)], title="bench", model_alias="fast") for n in range(2 * blocks)]
            )
            pending = {
                side: [
                    Turn(session=fresh[2 * (n // BLOCK) + side], user=fresh[2 * (n // BLOCK) + side].user)
                    for n in range(turns)
                ]
                for side in (False, True)
            }
        else:
            pending = {True: new_turns(turns), False: new_turns(turns)}
        spent, pair_ratios = {True: 0.0, False: 0.0}, []
        for index, block in enumerate(range(0, turns, BLOCK)):
            took = {}
            for rollup in (False, True) if index % 2 == 0 else (True, False):
                started = time.perf_counter()
                for turn in pending[rollup][block : block + BLOCK]:
                    write(turn, rollup)
                took[rollup] = time.perf_counter() - started
                spent[rollup] += took[rollup]
            pair_ratios.append(took[False] / took[True])
        without, with_rollup = turns / spent[False], turns / spent[True]
        results.append(
            {
                "variant": name,
                "turns": turns,
                "without_per_s": without,
                "with_per_s": with_rollup,
                "ratio": statistics.median(pair_ratios),
            }
        )
        log(f"write path, {name}: {without:.0f} turns/s without the rollup, {with_rollup:.0f} with")
    return results


def main() -> None:
    args = parse_args()
    url = server_url(default="postgres://postgres@127.0.0.1:5432/postgres")
    ensure_database(url, fresh=args.fresh)
    setup_django(url)
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from django.db import connection

    ensure_fixtures(args.users)
    generate_calls(args.rows)
    with connection.cursor() as cursor:
        cursor.execute("SELECT generated FROM bench_state")
        generated = cursor.fetchone()[0]
    print()
    print(f"Usage benchmark on PostgreSQL {connection.pg_version // 10000}: {generated:,} generated LLM calls,")
    print(
        f"{args.users} users, {len(ALIAS_PRICES)} aliases, {DAYS} days from {START.date()}; summary of {MONTH[0]}..{MONTH[1]}."
    )
    if not args.skip_summary:
        rebuild_s = rebuild_rollups()
        summaries = measure_summaries(args.repeat)
        print(f"\nrebuild_usage_rollups over all calls: {rebuild_s:.1f} s")
        print(f"{'summary (bucket=day)':<22}{'calls':>12}{'rollup ms':>12}{'raw ms':>12}{'raw/rollup':>12}  equal")
        for row in summaries:
            print(
                f"{row['scenario']:<22}{row['calls']:>12,}{row['rollup_ms']:>12.1f}{row['raw_ms']:>12.1f}"
                f"{row['speedup']:>11.1f}x  {'yes' if row['equal'] else 'NO'}"
            )
        if not all(row["equal"] for row in summaries):
            sys.exit("FAIL: the rollup summary differs from the raw aggregation")
    if not args.skip_write:
        writes = measure_write_path(args.write_turns)
        print(f"\n{'write path (N turns each)':<28}{'without /s':>12}{'with /s':>12}{'median ratio':>14}{'cost':>8}")
        for row in writes:
            print(
                f"{row['variant'] + ' (' + str(row['turns']) + ')':<28}{row['without_per_s']:>12.0f}"
                f"{row['with_per_s']:>12.0f}{row['ratio']:>14.3f}{(1 - row['ratio']) * 100:>7.1f}%"
            )
    print(f"\n(finished {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC)")


if __name__ == "__main__":
    main()
