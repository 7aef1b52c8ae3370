import json

import pytest
from jsonschema import Draft202012Validator

from chat.engine.orchestrator_protocol import (
    NEXT_SPEAKER,
    orchestrator_choice_parse,
    orchestrator_system_prompt,
    orchestrator_tool_definition,
)
from chat.selectors import participants_for_session
from chat.services.participants import participant_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def panel(panel_session):  # noqa: ANN001, ANN201
    participant_create(session=panel_session, name="Critic", model_alias="fast", system_prompt="Find   the flaws.")
    participant_create(session=panel_session, name="Writer", model_alias="smart")
    return list(participants_for_session(session=panel_session))


def test_definition_allows_only_the_sessions_participants_or_null(panel):
    definition = orchestrator_tool_definition(participants=panel)
    Draft202012Validator.check_schema(definition["parameters"])
    validator = Draft202012Validator(definition["parameters"])
    critic, writer = panel

    assert definition["name"] == NEXT_SPEAKER
    assert validator.is_valid({"participant_id": critic.id})
    assert validator.is_valid({"participant_id": None, "reason": "done"})
    assert not validator.is_valid({"participant_id": writer.id + 100})
    assert not validator.is_valid({})


def test_system_prompt_lists_the_roster(panel_session, panel):
    critic, writer = panel
    prompt = orchestrator_system_prompt(session=panel_session, participants=panel)
    assert f"- id {critic.id}: Critic (Find the flaws.)" in prompt
    assert f"- id {writer.id}: Writer" in prompt
    assert NEXT_SPEAKER in prompt


def test_choice_of_a_participant(panel):
    critic, writer = panel
    choice = orchestrator_choice_parse(
        participants=panel, arguments=json.dumps({"participant_id": writer.id, "reason": " needs\nprose "})
    )
    assert choice.participant == writer
    assert choice.reason == "needs prose"
    assert choice.error == ""
    assert (
        orchestrator_choice_parse(participants=panel, arguments={"participant_id": float(critic.id)}).participant
        == critic
    )


def test_null_ends_the_turn(panel):
    choice = orchestrator_choice_parse(participants=panel, arguments={"participant_id": None, "reason": "answered"})
    assert (choice.participant, choice.reason, choice.error) == (None, "answered", "")


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ("{not json", "arguments are not valid JSON"),
        ("", "participant_id is missing"),
        (None, "participant_id is missing"),
        ([1], "participant_id is missing"),
        ({"participant_id": True}, "no participant with id True"),
        ({"participant_id": "Critic"}, "no participant with id 'Critic'"),
        ({"participant_id": 10**9}, "no participant with id 1000000000"),
    ],
)
def test_unusable_choices_end_the_turn_with_an_error(panel, arguments, error):
    choice = orchestrator_choice_parse(participants=panel, arguments=arguments)
    assert choice.participant is None
    assert choice.error == error


def test_another_sessions_participant_cannot_be_chosen(panel, other_session):
    theirs = participant_create(session=other_session, name="Theirs", model_alias="fast")
    choice = orchestrator_choice_parse(participants=panel, arguments={"participant_id": theirs.id})
    assert choice.participant is None
    assert choice.error == f"no participant with id {theirs.id}"
