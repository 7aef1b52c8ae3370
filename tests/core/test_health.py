import pytest
from rest_framework.test import APIClient

from config.celery import app as celery_app
from tests.services import redis_available

pytestmark = pytest.mark.django_db


def test_health_answers_200_with_both_parts_up(settings):
    response = APIClient().get("/api/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["broker"]["ok"] is True


def test_health_answers_503_naming_the_broker_when_it_is_unreachable(settings, monkeypatch):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    monkeypatch.setattr(celery_app.conf, "broker_url", "redis://127.0.0.1:1/0")
    response = APIClient().get("/api/v1/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down: broker"
    assert body["broker"]["ok"] is False
    assert body["database"]["ok"] is True


@pytest.mark.redis
def test_health_reports_the_real_redis_broker(settings):
    assert redis_available()
    settings.CELERY_TASK_ALWAYS_EAGER = False
    response = APIClient().get("/api/v1/health")
    assert response.status_code == 200
    assert "redis" in response.json()["broker"]["transport"].lower()
