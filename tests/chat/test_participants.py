import pytest

from chat.models import ChatSession, Participant
from chat.services.participants import MAX_PARTICIPANTS, participant_create

pytestmark = pytest.mark.django_db


def url(panel_session, pid=None) -> str:  # noqa: ANN001
    base = f"/api/v1/sessions/{panel_session.id}/participants"
    return base if pid is None else f"{base}/{pid}"


def add(panel_session, name: str, alias: str = "fast", **extra) -> Participant:  # noqa: ANN001
    return participant_create(session=panel_session, name=name, model_alias=alias, **extra)


def test_create_and_list_in_speaking_order(owner_client, panel_session):
    first = owner_client.post(
        url(panel_session), {"name": "Critic", "model_alias": "smart", "system_prompt": "Be harsh."}
    )
    second = owner_client.post(url(panel_session), {"name": "Optimist", "model_alias": "fast"})
    early = owner_client.post(url(panel_session), {"name": "Opener", "model_alias": "fast", "position": 0})

    assert first.status_code == 201, first.content
    assert first.json() == {
        "id": first.json()["id"],
        "name": "Critic",
        "model_alias": "smart",
        "system_prompt": "Be harsh.",
        "position": 0,
    }
    assert second.json()["position"] == 1
    assert second.json()["system_prompt"] == ""
    listed = owner_client.get(url(panel_session)).json()
    assert listed["count"] == 3
    # Same position: the earlier participant speaks first.
    assert [p["name"] for p in listed["results"]] == ["Critic", "Opener", "Optimist"]
    assert early.json()["position"] == 0
    assert Participant.objects.filter(session=panel_session).count() == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "A", "model_alias": "nope"}, "model_alias"),
        ({"name": "A", "model_alias": "retired"}, "model_alias"),
        ({"name": "A"}, "model_alias"),
        ({"model_alias": "fast"}, "name"),
        ({"name": "   ", "model_alias": "fast"}, "name"),
        ({"name": "x" * 101, "model_alias": "fast"}, "name"),
        ({"name": "A", "model_alias": "fast", "position": -1}, "position"),
        ({"name": "A", "model_alias": "fast", "position": "first"}, "position"),
        ({"name": "A", "model_alias": "fast", "system_prompt": "x" * 32_001}, "system_prompt"),
    ],
)
def test_invalid_participant_is_400_naming_the_field(owner_client, panel_session, body, field):
    response = owner_client.post(url(panel_session), body)
    assert response.status_code == 400, response.content
    assert list(response.json()["error"]["fields"]) == [field]
    assert not Participant.objects.exists()


def test_participants_of_someone_elses_session_are_404(owner_client, other_session):
    add(other_session, "Theirs")
    assert owner_client.get(url(other_session)).status_code == 404
    assert owner_client.post(url(other_session), {"name": "Intruder", "model_alias": "fast"}).status_code == 404
    pid = Participant.objects.get().id
    assert owner_client.patch(url(other_session, pid), {"name": "Renamed"}).status_code == 404
    assert owner_client.delete(url(other_session, pid)).status_code == 404
    assert Participant.objects.get().name == "Theirs"
    assert Participant.objects.count() == 1


def test_participant_is_addressed_through_its_own_session(owner_client, owner, panel_session, other_session):
    """A participant id under another session id (even one's own) is 404."""
    second = ChatSession.objects.create(user=owner, title="second")
    theirs = add(other_session, "Theirs")
    mine_elsewhere = add(second, "Elsewhere")
    assert owner_client.patch(url(panel_session, theirs.id), {"name": "x"}).status_code == 404
    assert owner_client.patch(url(panel_session, mine_elsewhere.id), {"name": "x"}).status_code == 404
    assert owner_client.delete(url(panel_session, mine_elsewhere.id)).status_code == 404
    assert Participant.objects.get(pk=mine_elsewhere.id).name == "Elsewhere"


def test_unknown_session_is_404(owner_client, panel_session):
    missing = ChatSession(id=panel_session.id + 1000)
    assert owner_client.get(url(missing)).status_code == 404
    assert owner_client.get(f"/api/v1/sessions/{2**70}/participants").status_code == 404


def test_patch_changes_only_the_given_fields(owner_client, panel_session):
    participant = add(panel_session, "Critic", system_prompt="Be harsh.", position=3)
    response = owner_client.patch(url(panel_session, participant.id), {"model_alias": "smart"})
    assert response.status_code == 200, response.content
    assert response.json() == {
        "id": participant.id,
        "name": "Critic",
        "model_alias": "smart",
        "system_prompt": "Be harsh.",
        "position": 3,
    }
    response = owner_client.patch(
        url(panel_session, participant.id), {"name": "Judge", "system_prompt": "", "position": 0}
    )
    assert response.json()["name"] == "Judge"
    participant.refresh_from_db()
    assert (participant.name, participant.model_alias, participant.system_prompt, participant.position) == (
        "Judge",
        "smart",
        "",
        0,
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [({"model_alias": "retired"}, "model_alias"), ({"name": ""}, "name"), ({"position": 10**7}, "position")],
)
def test_invalid_patch_is_400_and_changes_nothing(owner_client, panel_session, body, field):
    participant = add(panel_session, "Critic")
    response = owner_client.patch(url(panel_session, participant.id), body)
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]
    participant.refresh_from_db()
    assert (participant.name, participant.model_alias, participant.position) == ("Critic", "fast", 0)


def test_delete_in_single_mode(owner_client, panel_session):
    participant = add(panel_session, "Only")
    assert owner_client.delete(url(panel_session, participant.id)).status_code == 204
    assert not Participant.objects.exists()
    assert owner_client.delete(url(panel_session, participant.id)).status_code == 404


def test_a_session_holds_at_most_the_maximum_of_participants(owner_client, panel_session):
    for index in range(MAX_PARTICIPANTS):
        add(panel_session, f"Agent {index}")
    response = owner_client.post(url(panel_session), {"name": "One too many", "model_alias": "fast"})
    assert response.status_code == 422
    assert str(MAX_PARTICIPANTS) in response.json()["error"]["message"]
    assert Participant.objects.count() == MAX_PARTICIPANTS


def test_participants_need_an_api_key(anon_client, panel_session):
    assert anon_client.get(url(panel_session)).status_code == 401
    assert anon_client.post(url(panel_session), {"name": "A", "model_alias": "fast"}).status_code == 401
    assert not Participant.objects.exists()


def test_participants_of_a_deleted_session_are_404(owner_client, panel_session):
    from django.utils import timezone

    participant = add(panel_session, "Left behind")
    ChatSession.objects.filter(pk=panel_session.pk).update(deleted_at=timezone.now())
    assert owner_client.get(url(panel_session)).status_code == 404
    assert owner_client.post(url(panel_session), {"name": "New", "model_alias": "fast"}).status_code == 404
    assert owner_client.patch(url(panel_session, participant.id), {"name": "x"}).status_code == 404
    assert Participant.objects.get().name == "Left behind"
