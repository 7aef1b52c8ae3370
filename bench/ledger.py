"""Ledger benchmark: debits per second through billing.services on one hot wallet
and spread over many wallets, against bare single-row UPDATEs of the same table, all
in one run on the same machine.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/parley .venv/bin/python bench/ledger.py

It creates (and drops again) its own database `parley_bench_ledger` on that server,
creates its tables, and runs four phases with CLIENTS threads, each with its own connection:

1. service, hot:    wallet_debit on one wallet (every debit waits for the row lock);
2. service, spread: wallet_debit over WALLETS wallets;
3. bare, hot:       `UPDATE billing_wallet SET balance = balance - x WHERE id = ...`;
4. bare, spread:    the same over other WALLETS wallets.

Each phase does the same number of operations. Afterwards every balance is checked
to the last decimal (service wallets also against their ledger sum and last
balance_after). Goals: hot >= 70% of spread; service >= 50% of bare UPDATE.
"""

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

from bench.pg import recreate_database, server_url, with_database  # noqa: E402

BENCH_DB = "parley_bench_ledger"
AMOUNT = Decimal("0.00012345")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=8000, help="operations per phase (default 8000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--wallets", type=int, default=1000, help="wallets in the spread phases (default 1000)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the four phases (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    parser.add_argument(
        "--no-flush-wait",
        action="store_true",
        help="diagnosis only: run the clients with synchronous_commit off, to show how much of the "
        "hot-wallet gap is the commit's WAL flush made while the row lock is held (never for the service)",
    )
    return parser.parse_args()


def setup_django(url: str) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = with_database(url, BENCH_DB)
    os.environ.pop("REDIS_URL", None)  # not needed: nothing here sends a task
    # Each client thread holds its own connection for a whole phase (this measures the
    # wallet lock, not pooling): with the pool's 12, a 13th client waited at the barrier
    # for ever.
    os.environ.setdefault("DB_POOL_MAX_SIZE", "0")
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ.setdefault("ALLOWED_HOSTS", "localhost")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Imported once Django is set up (django.setup() above): models need the app registry.
    import django

    django.setup()


def run_phase(
    clients: int, per_client: int, op: Callable[[int, int, int], None], *, round_: int, no_flush_wait: bool
) -> float:
    """Runs `per_client` operations in each of `clients` threads (each with its own
    connection, opened before the clock starts); returns the elapsed seconds."""
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from django.db import connection

    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def client(number: int) -> None:
        try:
            connection.ensure_connection()
            if no_flush_wait:
                with connection.cursor() as cursor:
                    cursor.execute("SET synchronous_commit TO off")
            barrier.wait()
            for index in range(per_client):
                op(round_, number, index)
        except BaseException as exc:  # noqa: BLE001  re-raised in the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def main() -> None:
    args = parse_args()
    url = server_url()
    print(f"Creating {BENCH_DB} ...", flush=True)
    recreate_database(url, BENCH_DB)
    try:
        setup_django(url)
        bench(args)
    finally:
        # Imported once Django is set up (django.setup() above): models need the app registry.
        from django.db import connections

        connections.close_all()
        if not args.keep:
            recreate_database(url, BENCH_DB, drop_only=True)


def create_tables() -> None:
    """The tables a debit touches, straight from the models (the same schema the
    migrations build, which tests/core/test_migrations.py keeps in step; migrating
    all of dj-stripe would take longer than the benchmark)."""
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType
    from django.db import connection

    # Imported once Django is set up (django.setup() above): models need the app registry.
    from accounts.models import ApiKey, User
    from billing.models import (
        AutoTopUp,
        CreditGrant,
        CreditHold,
        CreditTransaction,
        ModelPrice,
        SpendCounter,
        TopUp,
        Wallet,
    )
    from notifications.models import Notification  # also after django.setup(): a model needs the app registry

    # In foreign-key order. Beyond the ledger: what a debit may read or write (spend
    # counters, grant lots, the auto top-up check after commit, a low-balance notice).
    models = (
        ContentType, Permission, Group, User, ApiKey, Wallet, CreditTransaction, CreditGrant, SpendCounter,
        CreditHold, ModelPrice, TopUp, AutoTopUp, Notification,
    )  # fmt: skip
    with connection.schema_editor() as editor:
        for model in models:
            editor.create_model(model)
    # The ledger's triggers, as billing's migration 0007 installs them in production
    # (imported here, after django.setup(): pgtrigger needs the app registry).
    import pgtrigger

    pgtrigger.install(*(f"{m._meta.label}:{t.name}" for m in models for t in getattr(m._meta, "triggers", ())))


def bench(args: argparse.Namespace) -> None:
    # Imported once Django is set up (django.setup() above): models need the app registry.
    from django.db import connection
    from django.db.models import Sum
    from django.test.utils import CaptureQueriesContext

    # Imported once Django is set up (django.setup() above): models need the app registry.
    from accounts.models import User
    from billing.models import CreditTransaction, Wallet
    from billing.services import wallet_debit

    create_tables()
    ops = args.ops

    # Users and wallets straight from the models: setup speed only, nothing measured.
    users = User.objects.bulk_create(
        [User(email=f"bench{number}@example.com") for number in range(2 * args.wallets + 2)]
    )
    Wallet.objects.bulk_create([Wallet(user=user) for user in users])
    hot_user, bare_hot_user = users[0], users[1]
    spread_users = users[2 : 2 + args.wallets]
    bare_spread_users = users[2 + args.wallets :]
    wallet_id = dict(Wallet.objects.values_list("user_id", "id"))

    with CaptureQueriesContext(connection) as captured:
        wallet_debit(user=hot_user, amount=AMOUNT, reference="warm-up")
    statements = [query["sql"].split()[0] for query in captured.captured_queries]
    print(f"  one debit = {len(statements)} statements: {' '.join(statements)}")
    connection.close()

    def spread(users: list, client: int, index: int):  # noqa: ANN202
        return users[(index * args.clients + client) % args.wallets]

    def service_hot(round_: int, client: int, index: int) -> None:
        wallet_debit(user=hot_user, amount=AMOUNT, reference=f"hot-{round_}-{client}-{index}")

    def service_spread(round_: int, client: int, index: int) -> None:
        user = spread(spread_users, client, index)
        wallet_debit(user=user, amount=AMOUNT, reference=f"spread-{round_}-{client}-{index}")

    bare_sql = "UPDATE billing_wallet SET balance = balance - %s WHERE id = %s"

    def bare(target_wallet: Callable[[int, int], int]) -> Callable[[int, int, int], None]:
        def op(round_: int, client: int, index: int) -> None:
            with connection.cursor() as cursor:  # autocommit: each UPDATE is its own transaction
                cursor.execute(bare_sql, [AMOUNT, target_wallet(client, index)])

        return op

    phases = {
        "service hot": service_hot,
        "service spread": service_spread,
        "bare hot": bare(lambda client, index: wallet_id[bare_hot_user.pk]),
        "bare spread": bare(lambda client, index: wallet_id[spread(bare_spread_users, client, index).pk]),
    }
    # Interleaved rounds, each in a rotated order, so a burst of load from elsewhere on
    # a shared machine falls on every phase alike rather than on one of them.
    per_client = ops // args.rounds // args.clients
    per_round = per_client * args.clients
    ops = per_round * args.rounds
    print(
        f"{ops} operations per phase in {args.rounds} interleaved rounds, {args.clients} clients, "
        f"{args.wallets} wallets when spread"
    )
    if args.no_flush_wait:
        print("DIAGNOSIS RUN: synchronous_commit off in the benchmark's sessions (not how the service runs)")
    elapsed = dict.fromkeys(phases, 0.0)
    names = list(phases)
    for round_ in range(args.rounds):
        for name in names[round_ % 4 :] + names[: round_ % 4]:
            elapsed[name] += run_phase(
                args.clients, per_client, phases[name], round_=round_, no_flush_wait=args.no_flush_wait
            )
    rates = {name: ops / seconds for name, seconds in elapsed.items()}
    for name, rate in rates.items():
        print(f"  {name:<16} {ops:>6} ops in {elapsed[name]:7.2f} s  = {rate:8.0f} /s")

    # Every balance exact to the last decimal.
    expected = {wallet_id[hot_user.pk]: -(ops + 1) * AMOUNT, wallet_id[bare_hot_user.pk]: -ops * AMOUNT}
    # Each round sends operation k (0 <= k < per_round) to spread wallet k % wallets.
    for users in (spread_users, bare_spread_users):
        for position, user in enumerate(users):
            debits = args.rounds * (per_round // args.wallets + (position < per_round % args.wallets))
            expected[wallet_id[user.pk]] = -debits * AMOUNT
    balances = dict(Wallet.objects.values_list("id", "balance"))
    wrong = {pk: (balances[pk], value) for pk, value in expected.items() if balances[pk] != value}
    ledger = dict(
        CreditTransaction.objects.values("wallet").annotate(total=Sum("amount")).values_list("wallet", "total")
    )
    service_wallets = [wallet_id[hot_user.pk], *(wallet_id[user.pk] for user in spread_users)]
    unexplained = [pk for pk in service_wallets if ledger.get(pk, Decimal(0)) != balances[pk]]
    last_after = {
        row.wallet_id: row.balance_after
        for row in CreditTransaction.objects.filter(wallet_id__in=service_wallets)
        .order_by("wallet_id", "-id")
        .distinct("wallet_id")
    }
    broken_chain = [pk for pk in service_wallets if last_after.get(pk, Decimal(0)) != balances[pk]]
    rows = CreditTransaction.objects.count()
    print(f"Balances: {len(expected) - len(wrong)}/{len(expected)} exact; ledger rows {rows} (expected {2 * ops + 1}); "
          f"ledger sum != balance: {len(unexplained)}; last balance_after != balance: {len(broken_chain)}")  # fmt: skip
    if wrong or unexplained or broken_chain or rows != 2 * ops + 1:
        sys.exit(f"FAILED: wrong balances {list(wrong.items())[:5]}, ledger mismatches {unexplained[:5]}")

    hot_ratio = rates["service hot"] / rates["service spread"]
    spread_vs_bare = rates["service spread"] / rates["bare spread"]
    hot_vs_bare = rates["service hot"] / rates["bare hot"]
    print("Ratios:")
    print(f"  service hot / service spread   = {hot_ratio:6.1%}  (goal >= 70%)")
    print(f"  service spread / bare spread   = {spread_vs_bare:6.1%}  (goal >= 50%)")
    print(f"  service hot / bare hot         = {hot_vs_bare:6.1%}  (goal >= 50%)")
    missed = hot_ratio < 0.70 or spread_vs_bare < 0.50 or hot_vs_bare < 0.50
    print("Goals: " + ("MISSED" if missed else "met"))


if __name__ == "__main__":
    main()
