"""Chat rows for tests: sessions and turns. Messages, LLM calls and debits of a real
turn come from chat.services (or, for usage reports, tests.reporting.factories)."""

import factory

from chat.models import ChatSession, Turn


class ChatSessionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ChatSession

    title = factory.Sequence(lambda n: f"Session {n}")
    model_alias = "fast"


class TurnFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Turn

    session = factory.SubFactory(ChatSessionFactory)
    user = factory.SelfAttribute("session.user")
    model_alias = "fast"
    status = Turn.Status.COMPLETED
