"""Billing's raw SQL against the ORM path it replaces, per statement, in one process:
mean client CPU time (time.process_time) and wall time per call, the two paths
interleaved in rounds so a neighbour's load falls on both alike. Decides what stays
in billing/_sql.py (a raw statement must save at least 10% of the ORM path's cost).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/anything .venv/bin/python bench/sql_billing.py

It creates (and drops again) its own database `parley_bench_sqlbill`.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

from bench.pg import recreate_database, server_url, with_database  # noqa: E402

BENCH_DB = "parley_bench_sqlbill"
AMOUNT = Decimal("0.00012345")
UNBOUNDED = Decimal("1000000000")  # the setup's holds are never refused


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = with_database(url, BENCH_DB)
    os.environ.pop("REDIS_URL", None)  # nothing here sends a task
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ.setdefault("ALLOWED_HOSTS", "localhost")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django  # imported once the environment above is set: settings read it

    django.setup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per path and statement (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()
    url = server_url()
    recreate_database(url, BENCH_DB)
    try:
        setup_django(url)
        bench(args.calls, args.rounds)
    finally:
        # Django is set up by now (or failed before importing this).
        from django.db import connections

        connections.close_all()
        recreate_database(url, BENCH_DB, drop_only=True)


def bench(calls: int, rounds: int) -> None:
    # Models are imported once setup_django has configured Django.
    from django.core.management import call_command
    from django.db import transaction

    # Models are imported once setup_django has configured Django.
    from accounts.models import User
    from billing import _sql, services
    from billing.models import CreditHold, CreditTransaction, ModelPrice, TransactionKind, Wallet

    call_command("migrate", verbosity=0)  # every table the billing paths touch (spend counters, grants)
    wallets = {}
    for name in ("post", "settle", "hold"):
        for path in ("raw", "orm"):
            user = User.objects.create(email=f"{name}-{path}@bench")
            Wallet.objects.create(user=user, balance=Decimal("1000000"))
            wallets[name, path] = user.pk
    ModelPrice.objects.create(
        alias="fast", provider="local", provider_model="m", input_credits_per_mtok=1, output_credits_per_mtok=2
    )
    for n in range(50):  # other aliases, and inactive history of this one
        ModelPrice.objects.create(
            alias=f"a{n}", provider="local", provider_model="m", input_credits_per_mtok=1, output_credits_per_mtok=2
        )
    counter = iter(range(10**9))

    def post(path: str, *, settle: bool) -> Callable[[], None]:
        user_id = wallets["settle" if settle else "post", path]
        post_orm = services._post_orm  # noqa: SLF001  the ORM path itself, not the dispatch

        def setup() -> dict:
            reference = f"r{next(counter)}"
            if settle:
                with transaction.atomic():
                    services._hold_place_orm(user_id=user_id, amount=AMOUNT, reference=reference, overdraft=UNBOUNDED)  # noqa: SLF001
            return {"reference": reference, "release_hold": reference if settle else None}

        def call(reference: str, release_hold: str | None) -> None:
            common = {"user_id": user_id, "kind": TransactionKind.DEBIT, "amount": -AMOUNT, "reason": ""}
            if path == "raw":
                _sql.ledger_post(**common, reference=reference, actor_id=None, release_hold=release_hold)
            else:
                post_orm(**common, reference=reference, actor=None, release_hold=release_hold)

        return setup, call

    def hold(path: str) -> tuple:
        user_id = wallets["hold", path]
        place = _sql.hold_place if path == "raw" else services._hold_place_orm  # noqa: SLF001

        def call(reference: str) -> None:
            with transaction.atomic():  # wallet_hold_place's savepoint, around either path
                place(user_id=user_id, amount=AMOUNT, reference=reference, overdraft=Decimal("0"))

        return lambda: {"reference": f"h{next(counter)}"}, call

    def price(path: str) -> tuple:
        def call() -> None:
            if path == "raw":
                _sql.model_price_active(alias="fast")
            else:
                ModelPrice.objects.filter(alias="fast", active=True).first()

        return dict, call

    with transaction.atomic():
        services._hold_place_orm(
            user_id=wallets["hold", "raw"], amount=AMOUNT, reference="the-turn", overdraft=UNBOUNDED
        )  # noqa: SLF001

    def hold_amount(path: str) -> tuple:
        def call() -> None:
            if path == "raw":
                _sql.hold_amount(reference="the-turn")
            else:
                CreditHold.objects.filter(reference="the-turn").values_list("amount", flat=True).first()

        return dict, call

    statements = {
        "ledger post (debit)": lambda path: post(path, settle=False),
        "ledger post settling a hold": lambda path: post(path, settle=True),
        "hold place (block mode)": hold,
        "price of an alias": price,
        "amount of a turn's hold": hold_amount,
    }
    totals = {(name, path): [0.0, 0.0] for name in statements for path in ("raw", "orm")}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for name, make in statements.items():
            for path in ("raw", "orm"):
                setup, call = make(path)
                argsets = [setup() for _ in range(per_round)]
                cpu, wall = time.process_time(), time.perf_counter()
                for kwargs in argsets:
                    call(**kwargs)
                totals[name, path][0] += time.process_time() - cpu
                totals[name, path][1] += time.perf_counter() - wall
    done = per_round * rounds
    print(f"{done} calls per path, {rounds} interleaved rounds; mean per call in microseconds")
    print(f"{'statement':30} {'raw cpu':>8} {'orm cpu':>8} {'saved':>6} {'raw wall':>9} {'orm wall':>9} {'saved':>6}")
    for name in statements:
        (raw_cpu, raw_wall), (orm_cpu, orm_wall) = totals[name, "raw"], totals[name, "orm"]
        print(
            f"{name:30} {raw_cpu / done * 1e6:8.0f} {orm_cpu / done * 1e6:8.0f} {1 - raw_cpu / orm_cpu:6.0%}"
            f" {raw_wall / done * 1e6:9.0f} {orm_wall / done * 1e6:9.0f} {1 - raw_wall / orm_wall:6.0%}"
        )
    # Both paths wrote what they should: every wallet still equals its ledger.
    for user_id in wallets.values():
        wallet = Wallet.objects.get(user_id=user_id)
        rows = CreditTransaction.objects.filter(wallet=wallet)
        assert wallet.balance == Decimal("1000000") - sum(-r.amount for r in rows), user_id


if __name__ == "__main__":
    main()
