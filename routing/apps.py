from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Upstreams and routing"

    def ready(self) -> None:
        # Connects the receivers; here, not at the top: they need the models.
        from routing import signals  # noqa: F401
