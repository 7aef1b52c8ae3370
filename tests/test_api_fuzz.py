"""Property-based fuzz of every endpoint in the OpenAPI schema: whatever a client
sends, no request ends in a 500 and every answer matches the schema. It covers
each endpoint later issues add, with no change here."""

import json
import re
from decimal import Decimal

import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.models import EndUser, User, all_scopes
from accounts.services import api_key_create
from billing.services import wallet_grant
from chat.models import ChatSession, Participant
from config.wsgi import application
from organizations.models import Membership, Organization
from organizations.services import invitation_create, organization_api_key_create, organization_create
from tests.chat.conftest import make_price
from tests.conftest import client_for, make_user
from tests.fakes.stripe_server import FakeStripe

MAX_EXAMPLES = 25

# Endpoints whose answers are not JSON documents the schema can describe.
SKIP_PATHS = r"/stream$"


schema = schemathesis.openapi.from_wsgi("/api/schema/", application)


@schemathesis.check
def no_server_error(ctx, response, case) -> None:  # noqa: ANN001
    """500 is always a bug. A 503 is a documented answer (e.g. top-up while Stripe
    is not configured), so 5xx other than 503 fails too."""
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"{case.method} {case.formatted_path} answered {response.status_code}")


@pytest.fixture
def keep_test_connection():  # noqa: ANN201
    """Requests go through the real WSGI app, whose request signals would close the
    connection holding the test transaction; Django's own test client detaches them too."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture(scope="module")
def fake_stripe():  # noqa: ANN201
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture
def stripe_on(fake_stripe, settings):  # noqa: ANN001, ANN201
    """Stripe on against a fake Stripe, so the top-up endpoint is fuzzed past the 503
    it answers when Stripe is off (tests/stripe covers that one)."""
    settings.STRIPE_SECRET_KEY = fake_stripe.api_key
    settings.STRIPE_API_BASE = fake_stripe.url


@pytest.fixture
def fuzz_auth(db, keep_test_connection, stripe_on):  # noqa: ANN001, ANN201
    # A superuser, so the fuzz reaches every staff endpoint's own logic (grants need a permission),
    # with a key of every scope, so it reaches the key management endpoints' (`keys`) too.
    user = make_user("fuzz@example.com", staff=True, is_superuser=True)
    # An organization they own, so /orgs lists one and a generated small org_id may reach it.
    organization_create(creator=user, name="Fuzz Org")
    client = client_for(user, scopes=all_scopes())
    return client._credentials["HTTP_AUTHORIZATION"]


@schema.exclude(path_regex=SKIP_PATHS).parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@pytest.mark.django_db
def test_no_request_ends_in_a_500_or_breaks_the_schema(case, fuzz_auth):
    case.headers = {**(case.headers or {}), "Authorization": fuzz_auth}
    # Authentication paths (401s) are tested one by one in tests/accounts; here every
    # request carries a valid staff key so the fuzz reaches the endpoints' own logic.
    case.call_and_validate(
        checks=[no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    )


# --- text no database can store, and nesting nothing should walk -----------------------
# Explicit cases beside the generated ones (hypothesis rarely writes these): every
# operation taking a JSON body, under /api/v1 and /v1, gets a NUL, a lone surrogate and
# 50,000 levels of nesting in each of its fields, and in each text and key of a valid
# example where one is given here (so the text reaches the service behind the parser).
# core.parsers answers 400 naming the field; /v1 stores a NUL in message content,
# tool schemas and stops as U+FFFD. Never a 5xx.

BAD_TEXTS = ("a\x00b", "a\ud800b")
DEEP = "@deep@"  # replaced, in the body's text, by 50,000 nested lists
VALID = {
    "/v1/chat/completions": {
        "model": "fast", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "stop": ["x"], "user": "u",
        "tools": [{"type": "function", "function": {
            "name": "f", "description": "d", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        }}],
    },
    "/api/v1/sessions": {"title": "t", "system_prompt": "p"},
    "/api/v1/sessions/{session_id}": {"title": "t", "system_prompt": "p"},
    "/api/v1/sessions/{session_id}/turns": {"content": "hi"},
    "/api/v1/sessions/{session_id}/participants": {"name": "n", "model_alias": "fast", "system_prompt": "p"},
    "/api/v1/auth/keys": {"name": "k"},
    "/api/v1/auth/register": {"email": "new@example.com", "password": "a long password 123"},
}  # fmt: skip


def _json_operations() -> list[tuple[str, str, list[str]]]:
    """(method, path, the request body's property names) of every operation taking JSON."""
    raw = schema.raw_schema
    found = []
    for path, item in raw["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {}) if isinstance(operation, dict) else {}
            if method in ("post", "put", "patch") and "application/json" in content:
                body = content["application/json"]["schema"]
                if "$ref" in body:
                    body = raw["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
                found.append((method, path, sorted(body.get("properties", {}))))
    return found


def _one_bad(value, bad: str):  # noqa: ANN001, ANN202
    """Copies of `value`, each with one of its texts made `bad`, or a key added that is."""
    if isinstance(value, str):
        yield bad
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for changed in _one_bad(item, bad):
                yield [*value[:index], changed, *value[index + 1 :]]
    elif isinstance(value, dict):
        for key, item in value.items():
            for changed in _one_bad(item, bad):
                yield {**value, key: changed}
        yield {**value, f"key {bad}": "x"}


def _bad_bodies(path: str, properties: list[str]) -> list[str]:
    valid = VALID.get(path, {})
    bodies = [{**valid, name: bad} for name in properties for bad in BAD_TEXTS]
    bodies += [changed for bad in BAD_TEXTS for changed in _one_bad(valid, bad)]
    bodies += [{**valid, name: DEEP} for name in properties]
    deep = "[" * 50_000 + "]" * 50_000
    return [json.dumps(body).replace(f'"{DEEP}"', deep) for body in bodies] + [deep]


@pytest.fixture
def bad_body_objects(fuzz_auth, settings):  # noqa: ANN001, ANN201
    """A key with every scope (key management included) of the fuzz user, the objects
    the paths name (the user's own: a session, a participant, a key, an end user), credits, the `fast` alias, registration open."""
    settings.ALLOW_REGISTRATION = True
    user = User.objects.get(email="fuzz@example.com")
    key, raw_key = api_key_create(user=user, name="bad bodies", scopes=all_scopes())
    wallet_grant(user=user, amount=Decimal("100"), reason="fuzz credits")
    make_price("fast")
    session = ChatSession.objects.create(user=user, title="fuzz", model_alias="fast", mode="roundtable")
    participant = Participant.objects.create(session=session, name="p", model_alias="fast")
    end_user = EndUser.objects.create(api_key=key, external_id="fuzz person")
    ids = {
        "session_id": session.pk, "participant_id": participant.pk, "user_id": user.pk, "key_id": key.pk,
        "end_user_id": end_user.pk,
    }  # fmt: skip
    # Under /orgs: the fuzz user's organization (they own it) and its member, invitation and key.
    organization = Organization.objects.get(slug="fuzz-org")
    owner = organization.memberships.get(user=user)
    member = Membership.objects.create(organization=organization, user=make_user("member@example.com"))
    invitation, token = invitation_create(actor=owner, email="invited@example.com")
    org_key, _ = organization_api_key_create(member=member, name="org key")
    org_ids = {
        "org_id": organization.pk, "member_id": member.pk, "invitation_id": invitation.pk, "key_id": org_key.pk,
        "token": token,
    }  # fmt: skip
    return f"Bearer {raw_key}", ids, org_ids


# Committed data: a plain /v1 answer waits for its turn on another thread.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path", "properties"), _json_operations(), ids=lambda v: str(v)[:60])
def test_a_nul_a_lone_surrogate_or_deep_nesting_is_never_a_5xx(method, path, properties, bad_body_objects):
    auth, ids, org_ids = bad_body_objects
    if path.startswith("/api/v1/orgs/") or path.startswith("/api/v1/admin/orgs/"):
        ids = {**ids, **org_ids}
    client = Client(HTTP_AUTHORIZATION=auth, raise_request_exception=False)
    url = re.sub(r"\{(\w+)\}", lambda m: str(ids.get(m.group(1), 0)), path)
    answers = []
    for body in _bad_bodies(path, properties):
        response = getattr(client, method)(url, body, content_type="application/json")
        answers.append(response.status_code)
        assert response.status_code < 500, f"{method.upper()} {path} answered {response.status_code}: {body[:200]}"
        assert response["Content-Type"].startswith("application/json")
    assert 400 in answers  # the bad text reached the parser, not only a refusal before it
