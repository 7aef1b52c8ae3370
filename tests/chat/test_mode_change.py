"""Session mode rules (an invalid mode change is 422 and changes nothing)."""

import pytest

from chat.models import ChatSession, Participant
from chat.services.participants import participant_create, session_mode_change
from core.exceptions import ApplicationError, StateConflict

pytestmark = pytest.mark.django_db


def add(panel_session, name: str) -> Participant:  # noqa: ANN001
    return participant_create(session=panel_session, name=name, model_alias="fast")


def stored(panel_session) -> tuple[str, str]:  # noqa: ANN001
    row = ChatSession.objects.get(pk=panel_session.pk)
    return row.mode, row.orchestrator_alias


def test_roundtable_needs_two_participants(panel_session):
    add(panel_session, "Alone")
    before = ChatSession.objects.get(pk=panel_session.pk).updated_at
    with pytest.raises(StateConflict) as info:
        session_mode_change(session=panel_session, mode="roundtable")
    assert info.value.message == "A round table needs at least 2 participants; this session has 1."
    assert stored(panel_session) == ("single", "")
    assert panel_session.mode == "single"
    assert ChatSession.objects.get(pk=panel_session.pk).updated_at == before

    add(panel_session, "Second")
    assert session_mode_change(session=panel_session, mode="roundtable") is panel_session
    assert panel_session.mode == "roundtable"
    assert stored(panel_session) == ("roundtable", "")


def test_orchestrator_needs_a_participant(panel_session):
    with pytest.raises(StateConflict, match="at least 1 participant"):
        session_mode_change(session=panel_session, mode="orchestrator", orchestrator_alias="smart")
    assert stored(panel_session) == ("single", "")
    assert panel_session.orchestrator_alias == ""


def test_orchestrator_needs_an_alias(panel_session):
    add(panel_session, "Worker")
    with pytest.raises(StateConflict, match="needs an orchestrator_alias"):
        session_mode_change(session=panel_session, mode="orchestrator")
    assert stored(panel_session) == ("single", "")

    session_mode_change(session=panel_session, mode="orchestrator", orchestrator_alias="smart")
    assert stored(panel_session) == ("orchestrator", "smart")
    # Later changes keep the stored alias unless told otherwise.
    session_mode_change(session=panel_session, mode="single")
    session_mode_change(session=panel_session, mode="orchestrator")
    assert stored(panel_session) == ("orchestrator", "smart")


@pytest.mark.parametrize("alias", ["unknown", "retired"])
def test_orchestrator_alias_must_be_an_active_price(panel_session, alias):
    add(panel_session, "Worker")
    with pytest.raises(ApplicationError) as info:
        session_mode_change(session=panel_session, mode="orchestrator", orchestrator_alias=alias)
    assert info.value.status_code == 400
    assert list(info.value.fields) == ["orchestrator_alias"]
    assert stored(panel_session) == ("single", "")


def test_orchestrator_alias_retired_since_it_was_set_blocks_the_change(panel_session, prices):
    add(panel_session, "Worker")
    session_mode_change(session=panel_session, mode="orchestrator", orchestrator_alias="smart")
    session_mode_change(session=panel_session, mode="single")
    prices["smart"].active = False
    prices["smart"].save()
    with pytest.raises(StateConflict, match="'smart' is no longer an active model alias"):
        session_mode_change(session=panel_session, mode="orchestrator")
    assert stored(panel_session) == ("single", "smart")


def test_clearing_the_orchestrator_alias_of_an_orchestrator_session_is_refused(panel_session):
    add(panel_session, "Worker")
    session_mode_change(session=panel_session, mode="orchestrator", orchestrator_alias="smart")
    with pytest.raises(StateConflict):
        session_mode_change(session=panel_session, mode="orchestrator", orchestrator_alias="")
    assert stored(panel_session) == ("orchestrator", "smart")
    session_mode_change(session=panel_session, mode="single", orchestrator_alias="")
    assert stored(panel_session) == ("single", "")


def test_single_is_always_allowed(panel_session):
    add(panel_session, "A")
    add(panel_session, "B")
    session_mode_change(session=panel_session, mode="roundtable")
    session_mode_change(session=panel_session, mode="single")
    assert stored(panel_session) == ("single", "")


def test_unknown_mode_is_400_naming_mode(panel_session):
    with pytest.raises(ApplicationError) as info:
        session_mode_change(session=panel_session, mode="panel")
    assert info.value.status_code == 400
    assert list(info.value.fields) == ["mode"]
    assert stored(panel_session) == ("single", "")


def test_a_stale_session_object_is_checked_against_the_database(panel_session):
    """The rule is checked on the locked row, not on what the caller holds in memory."""
    add(panel_session, "A")
    second = add(panel_session, "B")
    stale = ChatSession.objects.get(pk=panel_session.pk)
    Participant.objects.filter(pk=second.pk).delete()  # behind the services' back
    with pytest.raises(StateConflict, match="this session has 1"):
        session_mode_change(session=stale, mode="roundtable")
    assert stored(panel_session) == ("single", "")


# --- deleting participants the mode needs: 422 over the API ---------------------------


def test_roundtable_cannot_drop_below_two_participants(owner_client, panel_session):
    first, second, third = add(panel_session, "A"), add(panel_session, "B"), add(panel_session, "C")
    session_mode_change(session=panel_session, mode="roundtable")
    base = f"/api/v1/sessions/{panel_session.id}/participants"

    assert owner_client.delete(f"{base}/{third.id}").status_code == 204
    response = owner_client.delete(f"{base}/{second.id}")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_state"
    assert "at least 2 participants" in response.json()["error"]["message"]
    assert sorted(Participant.objects.values_list("id", flat=True)) == [first.id, second.id]
    assert stored(panel_session) == ("roundtable", "")


def test_orchestrator_cannot_lose_its_last_participant(owner_client, panel_session):
    only = add(panel_session, "Worker")
    session_mode_change(session=panel_session, mode="orchestrator", orchestrator_alias="smart")
    response = owner_client.delete(f"/api/v1/sessions/{panel_session.id}/participants/{only.id}")
    assert response.status_code == 422
    assert "at least 1 participant;" in response.json()["error"]["message"]
    assert Participant.objects.filter(pk=only.id).exists()

    session_mode_change(session=panel_session, mode="single")
    assert owner_client.delete(f"/api/v1/sessions/{panel_session.id}/participants/{only.id}").status_code == 204
