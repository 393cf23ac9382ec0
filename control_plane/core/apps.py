from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "control_plane.core"
    label = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        from django.conf import settings

        from control_plane.core import tracing

        # Before the first request builds the middleware chain (Django's instrumentation
        # adds its middleware to settings.MIDDLEWARE).
        tracing.start(settings.CP)
