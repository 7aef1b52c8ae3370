"""An organization's account owns what its members make through its keys, but a
conversation and a file are their member's own: another member's keys see them as
missing (404), and a turn's file_read reads only its own member's files."""

import json

import pytest

from accounts.models import all_scopes
from chat.tools.registry import tool_dispatch
from organizations.models import Membership
from tests.chat.test_files import upload
from tests.conftest import client_for
from tests.organizations.conftest import member_add

pytestmark = pytest.mark.django_db


@pytest.fixture
def keys(org, owner, fast):  # noqa: ANN001, ANN201
    """Ada's and Bob's org keys (and the owner's, a manager's)."""
    founder = Membership.objects.get(organization=org, user=owner)
    ada, bob = member_add(org, "ada@example.com"), member_add(org, "bob@example.com")
    made = {name: client_for(org.account, membership=member, scopes=all_scopes())
            for name, member in (("ada", ada), ("bob", bob), ("owner", founder))}  # fmt: skip
    made["members"] = {"ada": ada, "bob": bob}
    return made


def test_a_members_sessions_and_turns_are_theirs_alone(keys):
    ada, bob, owner = keys["ada"], keys["bob"], keys["owner"]
    session = ada.post("/api/v1/sessions", {"title": "ada's plans"}, format="json").json()
    turn = ada.post(f"/api/v1/sessions/{session['id']}/turns", {"content": "my secret"}, format="json").json()

    assert [s["title"] for s in ada.get("/api/v1/sessions").json()["results"]] == ["ada's plans"]
    for other in (bob, owner):  # a manager runs the organization, not its members' conversations
        assert other.get("/api/v1/sessions").json()["results"] == []
        assert other.get(f"/api/v1/sessions/{session['id']}").status_code == 404
        assert other.get(f"/api/v1/sessions/{session['id']}/turns").status_code == 404
        assert other.post(f"/api/v1/sessions/{session['id']}/turns", {"content": "hi"}, format="json").status_code == 404
        assert other.get(f"/api/v1/turns/{turn['id']}").status_code == 404
        assert other.post(f"/api/v1/turns/{turn['id']}/cancel").status_code == 404
        assert other.delete(f"/api/v1/sessions/{session['id']}").status_code == 404
    assert ada.get(f"/api/v1/turns/{turn['id']}").status_code == 200


def test_a_members_files_are_theirs_alone(keys, org):
    ada, bob = keys["ada"], keys["bob"]
    stored = upload(ada, "plan.txt", b"the secret plan", "text/plain").json()
    assert [f["id"] for f in ada.get("/api/v1/files").json()["results"]] == [stored["id"]]
    assert bob.get("/api/v1/files").json()["results"] == []
    assert bob.get(f"/api/v1/files/{stored['id']}").status_code == 404
    members = keys["members"]
    arguments = json.dumps({"file_id": stored["id"]})
    theirs = tool_dispatch(user=org.account, name="file_read", arguments=arguments, membership_id=members["bob"].pk)
    assert theirs.status == "error" and "No file with id" in theirs.content
    own = tool_dispatch(user=org.account, name="file_read", arguments=arguments, membership_id=members["ada"].pk)
    assert own.status == "ok" and "the secret plan" in own.content
