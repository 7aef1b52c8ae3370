"""The organizations migrations on a PostgreSQL database that already has people,
keys, wallets, ledgers, holds, spend counters, turns and usage: afterwards every
existing row reads as it did (a person stays a person, a key stays personal, a
wallet keeps its balance) and `reconcile_wallets` finds nothing to fix. The suite
itself builds its tables from the models (--nomigrations), so this runs the real
migrations, in a process of their own, on a database of their own."""

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.postgres]

# The last migration of each app before organizations.
BEFORE = {"accounts": "0005_end_users", "billing": "0008_end_users", "chat": "0008_embeddings",
          "reporting": "0004_end_users"}  # fmt: skip

SCRIPT = """
import json, sys
from decimal import Decimal
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = json.loads(sys.argv[1])
executor = MigrationExecutor(connection)
leaves = [node for node in executor.loader.graph.leaf_nodes() if node[0] != "organizations"]
before = [(app, BEFORE.get(app, name)) for app, name in leaves if app in BEFORE or app not in ("organizations",)]
executor.migrate(before)

# An account as the release before made it, with its history, written through the
# models of that state.
apps = MigrationExecutor(connection).loader.project_state(before).apps
User, Wallet = apps.get_model("accounts", "User"), apps.get_model("billing", "Wallet")
ApiKey, Txn = apps.get_model("accounts", "ApiKey"), apps.get_model("billing", "CreditTransaction")
Counter, Hold = apps.get_model("billing", "SpendCounter"), apps.get_model("billing", "CreditHold")
user = User.objects.create(email="ada@example.com", password="!", spend_cap_credits=Decimal("9"), spend_cap_window="day")
wallet = Wallet.objects.create(user=user, balance=Decimal("7.5"), held=Decimal("0.5"))
Txn.objects.create(wallet=wallet, kind="grant", amount=Decimal("10"), balance_after=Decimal("10"), reason="x")
Txn.objects.create(wallet=wallet, kind="debit", amount=Decimal("-2.5"), balance_after=Decimal("7.5"), reference="t1")
key = ApiKey.objects.create(user=user, name="ci", prefix="prl_x", key_hash="h" * 64, budget_credits=Decimal("3"),
                            budget_window="week", scopes=["chat"])
from django.utils import timezone
counter = Counter.objects.create(user=user, api_key=key, window="week", window_start=timezone.now(), spent=Decimal("1"))
Hold.objects.create(wallet=wallet, reference="t2", amount=Decimal("0.5"), key_counter=counter)

executor = MigrationExecutor(connection)
executor.loader.build_graph()
executor.migrate(executor.loader.graph.leaf_nodes())

from accounts.models import ApiKey, User
from billing.models import CreditHold, SpendCounter, Wallet
user = User.objects.get(email="ada@example.com")
key = ApiKey.objects.get(user=user)
print("RESULT " + json.dumps({
    "kind": user.kind, "organization": user.is_organization, "cap": str(user.spend_cap_credits),
    "key_membership": key.membership_id, "key_budget": str(key.budget_credits), "scopes": key.scopes,
    "balance": str(Wallet.objects.get(user=user).balance), "held": str(Wallet.objects.get(user=user).held),
    "counter": [SpendCounter.objects.get().membership_id, str(SpendCounter.objects.get().spent)],
    "hold": [CreditHold.objects.get().key_counter_id == SpendCounter.objects.get().pk, CreditHold.objects.get().member_counter_id],
}))
call_command("reconcile_wallets")
"""


@pytest.fixture
def fresh_database() -> str:
    name = f"parley_org_migration_{os.getpid()}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgres://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_existing_people_keys_and_wallets_read_the_same_after_the_migrations(fresh_database):
    import json

    env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_", "DEBUG"))}
    env.update(DATABASE_URL=fresh_database, SECRET_KEY="migration-test-key", ALLOWED_HOSTS="localhost")
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", f"import sys; sys.argv = ['', {json.dumps(BEFORE)!r}]\n{SCRIPT}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert json.loads(line.removeprefix("RESULT ")) == {
        "kind": "person", "organization": False, "cap": "9.00000000", "key_membership": None,
        "key_budget": "3.00000000", "scopes": ["chat"], "balance": "7.50000000", "held": "0.50000000",
        "counter": [None, "1.00000000"], "hold": [True, None],
    }  # fmt: skip
    assert "DRIFT" not in result.stdout
