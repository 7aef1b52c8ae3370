from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"

    def ready(self) -> None:
        # Registers chat's Celery tasks in every process (web included), so
        # chat.dispatch can send them by name and an eager setup runs them in place.
        # Here and not at the top: the tasks import the services, which need the models.
        from chat import tasks  # noqa: F401
