from __future__ import annotations

from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "Staff console"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from campaigns.signals import attempt_recorded
        from console.services import audit

        def record_attempt(sender: object, *, campaign: object, action: str, detail: dict, **_: object) -> None:
            audit(by="platform", action=action, target=campaign, **detail)

        # weak=False: the receiver is a local function, kept alive by the signal itself.
        attempt_recorded.connect(record_attempt, weak=False, dispatch_uid="console.audit.attempt")
