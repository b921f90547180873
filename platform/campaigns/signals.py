"""What campaigns announce to the apps above them (releases, the console's audit log), without importing them.

The apps depend one way: releases and console import campaigns, never the reverse. They connect their receivers in
their AppConfig.ready().
"""

from __future__ import annotations

from django.dispatch import Signal

# Sent with campaign=<Campaign>, action="campaign.attempt" | "campaign.attempt-end", detail=<dict>, by "platform".
attempt_recorded = Signal()

# Sent with campaign=<Campaign> inside campaign_complete's transaction, before the campaign is marked completed
# (releases publishes an auto-publish campaign's release here). A receiver that raises ValidationError rolls the
# completion back, and the campaign fails with "publishing refused: ...".
campaign_completing = Signal()
