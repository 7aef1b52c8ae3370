"""bin/serve's server line (gunicorn's ASGI worker, as the Procfile's `web`) serves the
embedded default: a /v1 answer streamed in pieces, and the admin's and the API docs'
pages with their CSS and JavaScript (whitenoise), so they look as they should."""

import re
import time
from decimal import Decimal
from pathlib import Path

import httpx2
import openai
import pytest

from accounts.services import api_key_create
from billing.services import wallet_grant
from tests.chat.conftest import make_price
from tests.serve import serve_line, served, server_env


def test_bin_serve_serves_the_asgi_handler_production_runs() -> None:
    line = serve_line()
    assert "gunicorn config.asgi -c config/gunicorn.conf.py" in line and "--worker-class asgi" in line
    assert '--bind "$addr"' in line and "runserver" not in line
    assert "--no-control-socket" in line  # several bin/serve (or a test's) on one machine: no shared socket


@pytest.mark.django_db(transaction=True)
def test_bin_serve_streams_a_v1_answer_in_pieces_and_serves_the_admin_assets(owner, tmp_path: Path) -> None:  # noqa: ANN001
    make_price("fast")
    wallet_grant(user=owner, amount=Decimal("10"), reason="test credits")
    _, key = api_key_create(user=owner, name="serve")
    env = server_env(tmp_path, LOCAL_LLM_LATENCY_MS="1500", LOCAL_LLM_PIECE_WORDS="1")
    auth = {"Authorization": f"Bearer {key}"}
    with served(env, tmp_path / "serve.log") as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)
        began, arrivals, text = time.perf_counter(), [], ""
        for chunk in client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "one two three four five six"}], stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter() - began)
                text += chunk.choices[0].delta.content
        plain = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "plain"}])
        client.close()
        session = httpx2.post(f"{base}/api/v1/sessions", json={"model_alias": "fast"}, headers=auth, timeout=10)
        waited = httpx2.post(
            f"{base}/api/v1/sessions/{session.json()['id']}/turns", json={"content": "wait"},
            headers={**auth, "Prefer": "wait=20"}, timeout=30,
        )  # fmt: skip

        login = httpx2.get(f"{base}/admin/login/", timeout=10)
        docs = httpx2.get(f"{base}/api/docs/", timeout=10)
        assets = [
            *re.findall(r'href="(/static/[^"]+\.css)"', login.text),
            *re.findall(r'src="(/static/[^"]+\.js)"', docs.text),
            *re.findall(r'href="(/static/[^"]+\.css)"', docs.text),
        ]
        served_assets = {path: httpx2.get(f"{base}{path}", timeout=10) for path in assets}

    assert text == "Echo: one two three four five six"
    assert len(arrivals) == 7 and arrivals[-1] - arrivals[0] > 0.75  # piece by piece, as the model spoke
    # Waits on the event loop for the turn's end, heard in the process (no Redis).
    assert plain.choices[0].message.content == "Echo: plain"
    assert waited.status_code == 201 and waited.json()["status"] == "completed", waited.text
    assert login.status_code == 200 and docs.status_code == 200
    assert "/static/admin/css/base.css" in assets
    assert any("swagger-ui" in path for path in assets)
    for path, answer in served_assets.items():
        assert answer.status_code == 200, path
        kind = "text/css" if path.endswith(".css") else "javascript"
        assert kind in answer.headers["content-type"], (path, answer.headers["content-type"])
        assert len(answer.content) > 500, path
