from __future__ import annotations

from django.apps import AppConfig


class ReleasesConfig(AppConfig):
    name = "releases"

    def ready(self) -> None:
        from campaigns.signals import campaign_completing
        from releases.services import publish_on_completion

        campaign_completing.connect(publish_on_completion, dispatch_uid="releases.publish_on_completion")
