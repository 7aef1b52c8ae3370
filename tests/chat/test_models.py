"""Chat rows read well where people see them (the admin, logs)."""

import pytest

from chat.models import ChatSession, LLMCall, Message, Participant, Turn

pytestmark = pytest.mark.django_db


def test_rows_have_readable_names(owner, price):
    session = ChatSession.objects.create(user=owner, title="Plans", model_alias="fast")
    turn = Turn.objects.create(session=session, user=owner, model_alias="fast")
    message = Message.objects.create(session=session, turn=turn, role="user", content="word " * 30)
    call = LLMCall.objects.create(turn=turn, user=owner, price=price, purpose="summary", model_alias="fast",
                                  provider="local", provider_model="echo")  # fmt: skip
    participant = Participant.objects.create(session=session, name="Critic", model_alias="fast")
    assert str(turn) == f"Turn {turn.pk} (queued)"
    assert str(message).startswith("user: word word") and str(message).endswith("…")
    assert str(call) == f"LLM call {call.pk}: summary on fast"
    assert str(participant) == "Critic (fast)"
    assert (LLMCall._meta.verbose_name, LLMCall._meta.verbose_name_plural) == ("LLM call", "LLM calls")


def test_the_admin_index_lists_llm_calls_by_their_name(client, staff_user):
    staff_user.is_superuser = True
    staff_user.save()
    client.force_login(staff_user)
    page = client.get("/admin/").content.decode()
    assert "LLM calls" in page and "Llm calls" not in page
