"""What campaigns announce to the apps above them (the console's audit log), without importing them.

The apps depend one way: console imports campaigns, never the reverse. A campaign event that the audit log records is
sent here; console connects the receiver in its AppConfig.ready().
"""

from __future__ import annotations

from django.dispatch import Signal

# Sent with campaign=<Campaign>, action="campaign.attempt" | "campaign.attempt-end", detail=<dict>, by "platform".
attempt_recorded = Signal()
