from django.apps import AppConfig


class CommunityConfig(AppConfig):
    name = "community"
    verbose_name = "Contributors and nodes"

    def ready(self) -> None:
        from bayanihan_site import throttle  # noqa: F401  (connects the login-failure counters)
