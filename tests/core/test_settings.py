"""The same code runs on the embedded default and on PostgreSQL + Redis: only the
environment differs. Each case starts a fresh interpreter with a given environment."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import django, json; django.setup();"
    "from django.conf import settings; from django.db import connection;"
    "from config.celery import app;"
    "print(json.dumps({'vendor': connection.vendor, 'eager': app.conf.task_always_eager,"
    " 'broker': app.conf.broker_url, 'debug': settings.DEBUG,"
    " 'acks_late': app.conf.task_acks_late, 'accept': list(app.conf.accept_content),"
    " 'registration': settings.ALLOW_REGISTRATION, 'overdraft': str(settings.BILLING_OVERDRAFT_LIMIT),"
    " 'signup_credits': str(settings.SIGNUP_CREDITS)}))"
)


def _settings_under(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "CELERY_", "DEBUG"))}
    clean = {k: v for k, v in clean.items() if k not in {"SECRET_KEY", "ALLOWED_HOSTS"}}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_environment_is_the_embedded_default():
    probe = _settings_under({})
    assert probe["vendor"] == "sqlite"
    assert probe["eager"] is True
    assert probe["broker"].startswith("memory")
    assert probe["debug"] is True
    assert probe["acks_late"] is True
    assert probe["accept"] == ["json"]
    assert probe["registration"] is True  # local use: anyone may sign up
    assert (probe["overdraft"], probe["signup_credits"]) == ("1", "0")


def test_database_and_redis_urls_switch_to_postgres_and_a_redis_broker():
    probe = _settings_under(
        {
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "SECRET_KEY": "x" * 50,
            "ALLOWED_HOSTS": "example.com",
        }
    )
    assert probe["vendor"] == "postgresql"
    assert probe["eager"] is False
    assert probe["broker"] == "redis://127.0.0.1:6379/0"
    assert probe["debug"] is False
    assert probe["registration"] is False  # a deployment opens registration on purpose


def test_without_debug_the_service_refuses_to_start_without_secret_key():
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "ALLOWED_HOSTS", "DEBUG"}}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "false"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "SECRET_KEY and ALLOWED_HOSTS" in result.stderr


# docs/production.md, "Behind a proxy, over HTTPS": the HTTPS settings a deployment sets (with SECRET_KEY,
# ALLOWED_HOSTS, DATABASE_URL and REDIS_URL of its own).
PRODUCTION_HTTPS = {
    "SECURE_SSL_REDIRECT": "on",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "on",
    "SECURE_HSTS_PRELOAD": "on",
}


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "CELERY_", "DEBUG", "SECURE_"))}
    production = {
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",  # `check` does not connect
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "SECRET_KEY": "k3y-" + "Zq9xW2vB7nM4pL8sR1tY6uC3eH5jK0aD" * 2,
        "ALLOWED_HOSTS": "parley.example.com",
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env={**clean, **production, **env}, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_check_deploy_is_clean_with_the_documented_production_settings():
    result = _check_deploy(PRODUCTION_HTTPS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    guide = (ROOT / "docs" / "production.md").read_text()
    for name, value in PRODUCTION_HTTPS.items():
        assert f"{name}={value}" in guide, name


def test_check_deploy_names_what_is_missing_without_them():
    result = _check_deploy({})
    assert result.returncode != 0
    assert "security.W004" in result.stderr + result.stdout  # HSTS
    assert "security.W008" in result.stderr + result.stdout  # SSL redirect
