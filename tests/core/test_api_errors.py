"""Every answer under /api/ carries the shared JSON error body, DEBUG on or off,
including the ones Django gives before a view runs; `/` says what this server is."""

import json

import pytest
from django.test import Client

from tests.conftest import client_for

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024


def error_of(response) -> dict:  # noqa: ANN001
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]


@pytest.mark.parametrize("debug", [True, False])
def test_an_unknown_api_url_is_a_json_404(settings, debug):
    settings.DEBUG = debug
    response = Client().get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert error_of(response) == {"code": "not_found", "message": "Not found."}


@pytest.mark.parametrize("debug", [True, False])
def test_a_json_body_over_the_size_limit_is_a_json_413(settings, owner, debug):
    settings.DEBUG = debug
    client = client_for(owner)
    session = client.post("/api/v1/sessions", {}, format="json").json()
    body = json.dumps({"content": "x" * (3 * MIB)})
    response = client.post(f"/api/v1/sessions/{session['id']}/turns", body, content_type="application/json")
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "request_too_large"
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in error["message"]
    assert len(response.content) < 500


@pytest.mark.parametrize("debug", [True, False])
def test_a_crash_under_the_api_is_a_json_500_without_a_traceback(settings, owner, monkeypatch, debug):
    settings.DEBUG = debug
    from core import views

    def broken() -> dict:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(views, "database_status", broken)
    client = Client(raise_request_exception=False)
    response = client.get("/api/v1/health")
    assert response.status_code == 500
    assert error_of(response)["code"] == "server_error"
    assert b"secret detail" not in response.content


def test_a_form_encoded_body_is_a_415_naming_its_media_type(owner):
    client = client_for(owner)
    response = client.post("/api/v1/sessions", {"title": "x"}, format="multipart")
    assert response.status_code == 415
    error = error_of(response)
    assert error["code"] == "unsupported_media_type"
    assert "multipart/form-data" in error["message"]
    response = client.post("/api/v1/sessions", "title=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert "application/x-www-form-urlencoded" in error_of(response)["message"]


def test_a_body_that_is_not_json_is_a_400_saying_so(owner):
    response = client_for(owner).post("/api/v1/sessions", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in error_of(response)["message"]


def test_pages_outside_the_api_keep_djangos_html(settings):
    settings.DEBUG = False
    response = Client().get("/no-such-page")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_the_root_page_says_what_this_is_and_links_docs_admin_and_health():
    response = Client().get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1>Parley</h1>" in html
    for link in ('href="/api/docs/"', 'href="/admin/"', 'href="/api/v1/health"', 'href="/api/schema/"'):
        assert link in html


# --- a chunked body (no Content-Length) through the web process's ASGI handler -------


def _asgi_post(path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict, bytes]:
    import asyncio

    from core.asgi import ASGIHandler
    from tests.asgi import asgi_call

    return asyncio.run(asgi_call(ASGIHandler(), "POST", path, body=body, headers=headers, chunked=True))


@pytest.mark.django_db(transaction=True)
def test_a_chunked_json_body_is_read_and_one_over_the_limit_is_a_json_413(owner):
    from accounts.models import all_scopes
    from accounts.services import api_key_create

    _, raw_key = api_key_create(user=owner, name="chunked", scopes=all_scopes())  # POST auth/keys needs `keys`
    headers = [(b"authorization", f"Bearer {raw_key}".encode()), (b"content-type", b"application/json")]

    status, _, content = _asgi_post("/api/v1/auth/keys", json.dumps({"name": "sent in chunks"}).encode(), headers)
    assert status == 201, content
    assert json.loads(content)["name"] == "sent in chunks"

    status, head, content = _asgi_post("/api/v1/auth/keys", json.dumps({"name": "x" * (3 * MIB)}).encode(), headers)
    assert status == 413, content
    assert head["content-type"].startswith("application/json")
    assert json.loads(content)["error"]["code"] == "request_too_large"
