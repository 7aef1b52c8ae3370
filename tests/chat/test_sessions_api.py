"""Sessions CRUD: owner only, mode rules as 422 that change nothing."""

import pytest

from chat.models import ChatSession, Participant
from tests.chat.conftest import make_price

pytestmark = pytest.mark.django_db

FIELDS = {
    "id", "title", "mode", "source", "model_alias", "orchestrator_alias", "system_prompt", "created_at", "updated_at",
}  # fmt: skip


def test_create_and_read_a_session(owner_client, owner, price):
    created = owner_client.post(
        "/api/v1/sessions", {"title": "Plans", "model_alias": "fast", "system_prompt": "Be kind."}, format="json"
    )
    assert created.status_code == 201, created.content
    assert set(created.data) == FIELDS
    assert (created.data["title"], created.data["mode"], created.data["model_alias"]) == ("Plans", "single", "fast")
    assert created.data["source"] == "chat"  # the OpenAI endpoint's sessions say "openai" (tests/openai_api)
    row = ChatSession.objects.get(pk=created.data["id"])
    assert (row.user, row.system_prompt) == (owner, "Be kind.")

    fetched = owner_client.get(f"/api/v1/sessions/{row.pk}")
    assert fetched.status_code == 200 and fetched.data == created.data


def test_a_session_without_alias_gets_the_first_configured_one(owner_client, price):
    make_price("smart")
    created = owner_client.post("/api/v1/sessions", {}, format="json")
    assert created.status_code == 201 and created.data["model_alias"] == "fast"


def test_create_refuses_an_inactive_alias_naming_the_field(owner_client, price):
    make_price("old", active=False)
    for alias in ("old", "missing"):
        answer = owner_client.post("/api/v1/sessions", {"model_alias": alias}, format="json")
        assert answer.status_code == 400
        assert list(answer.data["error"]["fields"]) == ["model_alias"]
    assert not ChatSession.objects.exists()


def test_create_refuses_a_round_table_without_participants(owner_client, price):
    answer = owner_client.post("/api/v1/sessions", {"mode": "roundtable"}, format="json")
    assert answer.status_code == 422 and answer.data["error"]["code"] == "invalid_state"
    assert not ChatSession.objects.exists()


def test_bad_mode_is_400_naming_mode(owner_client, price):
    answer = owner_client.post("/api/v1/sessions", {"mode": "chaos"}, format="json")
    assert answer.status_code == 400 and list(answer.data["error"]["fields"]) == ["mode"]


def test_list_shows_only_own_live_sessions(owner_client, owner, other_user, price):
    mine = ChatSession.objects.create(user=owner, title="mine")
    ChatSession.objects.create(user=other_user, title="theirs")
    gone = ChatSession.objects.create(user=owner, title="gone")
    owner_client.delete(f"/api/v1/sessions/{gone.pk}")
    answer = owner_client.get("/api/v1/sessions")
    assert answer.status_code == 200
    assert [item["id"] for item in answer.data["results"]] == [mine.pk]


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_someone_elses_session_is_404(other_client, owner, price, method):
    session = ChatSession.objects.create(user=owner, title="private", system_prompt="secret prompt")
    answer = getattr(other_client, method)(f"/api/v1/sessions/{session.pk}", {"title": "mine now"}, format="json")
    assert answer.status_code == 404
    assert b"secret prompt" not in answer.content and b"private" not in answer.content
    row = ChatSession.objects.get(pk=session.pk)
    assert (row.title, row.deleted_at) == ("private", None)


def test_unknown_and_huge_ids_are_404(owner_client, price):
    assert owner_client.get("/api/v1/sessions/987654").status_code == 404
    assert owner_client.get("/api/v1/sessions/99999999999999999999999").status_code == 404


def test_patch_changes_title_alias_and_prompt(owner_client, owner, price):
    make_price("smart")
    session = ChatSession.objects.create(user=owner, title="a", model_alias="fast")
    answer = owner_client.patch(
        f"/api/v1/sessions/{session.pk}", {"title": "b", "model_alias": "smart", "system_prompt": "Terse."},
        format="json",
    )  # fmt: skip
    assert answer.status_code == 200, answer.content
    assert (answer.data["title"], answer.data["model_alias"], answer.data["system_prompt"]) == ("b", "smart", "Terse.")
    session.refresh_from_db()
    assert (session.title, session.model_alias, session.system_prompt) == ("b", "smart", "Terse.")


def test_patch_with_an_inactive_alias_is_400_and_changes_nothing(owner_client, owner, price):
    session = ChatSession.objects.create(user=owner, title="a", model_alias="fast")
    answer = owner_client.patch(f"/api/v1/sessions/{session.pk}", {"title": "b", "model_alias": "gone"}, format="json")
    assert answer.status_code == 400 and list(answer.data["error"]["fields"]) == ["model_alias"]
    session.refresh_from_db()
    assert (session.title, session.model_alias) == ("a", "fast")


def test_patch_to_roundtable_needs_two_participants_else_422_unchanged(owner_client, owner, price):
    session = ChatSession.objects.create(user=owner, title="a", model_alias="fast")
    Participant.objects.create(session=session, name="Ada", model_alias="fast", position=0)
    answer = owner_client.patch(f"/api/v1/sessions/{session.pk}", {"mode": "roundtable", "title": "b"}, format="json")
    assert answer.status_code == 422 and answer.data["error"]["code"] == "invalid_state"
    session.refresh_from_db()
    assert (session.mode, session.title) == ("single", "a")

    Participant.objects.create(session=session, name="Bob", model_alias="fast", position=1)
    answer = owner_client.patch(f"/api/v1/sessions/{session.pk}", {"mode": "roundtable", "title": "b"}, format="json")
    assert answer.status_code == 200 and (answer.data["mode"], answer.data["title"]) == ("roundtable", "b")


def test_patch_to_orchestrator_needs_a_participant_and_an_orchestrator_alias(owner_client, owner, price):
    session = ChatSession.objects.create(user=owner, title="a", model_alias="fast")
    answer = owner_client.patch(
        f"/api/v1/sessions/{session.pk}", {"mode": "orchestrator", "orchestrator_alias": "fast"}, format="json"
    )
    assert answer.status_code == 422
    Participant.objects.create(session=session, name="Ada", model_alias="fast", position=0)
    answer = owner_client.patch(f"/api/v1/sessions/{session.pk}", {"mode": "orchestrator"}, format="json")
    assert answer.status_code == 422
    session.refresh_from_db()
    assert (session.mode, session.orchestrator_alias) == ("single", "")
    answer = owner_client.patch(
        f"/api/v1/sessions/{session.pk}", {"mode": "orchestrator", "orchestrator_alias": "fast"}, format="json"
    )
    assert answer.status_code == 200 and answer.data["mode"] == "orchestrator"


def test_delete_hides_the_session_but_keeps_its_history(owner_client, owner, price):
    session = ChatSession.objects.create(user=owner, title="a", model_alias="fast")
    assert owner_client.delete(f"/api/v1/sessions/{session.pk}").status_code == 204
    assert owner_client.get(f"/api/v1/sessions/{session.pk}").status_code == 404
    assert owner_client.delete(f"/api/v1/sessions/{session.pk}").status_code == 404
    assert ChatSession.objects.filter(pk=session.pk, deleted_at__isnull=False).exists()


def test_anonymous_is_401(anon_client, price):
    assert anon_client.get("/api/v1/sessions").status_code == 401
    assert anon_client.post("/api/v1/sessions", {}, format="json").status_code == 401
