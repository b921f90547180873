"""Campaign writes, one module per stage a campaign goes through: setup (base model, create), actions (staff's launch,
cancel, resume, card notes), runs (submit to the SuperLink, follow, attempts, resume point, fail, complete), reports
(what the ServerApp reports while it runs).

The public names are re-exported here, so `from campaigns.services import campaign_create` keeps working; code that
patches a service must patch it where it is used, in its own module.
"""

from __future__ import annotations

from campaigns.services.actions import campaign_cancel, campaign_launch, campaign_resume, campaign_set_card_notes
from campaigns.services.reports import (
    ReportConflict,
    ReportRefused,
    link_secret_sha256,
    report_evaluation,
    report_failure,
    report_file,
    report_link_check,
    report_round,
    round_sealed,
)
from campaigns.services.runs import (
    attempts_used,
    campaign_complete,
    campaign_fail,
    campaign_follow,
    campaign_resume_point,
    campaign_run_config,
    campaign_run_failed,
    campaign_server_paths,
    campaign_submit,
    last_merged_round,
    round_files_stored,
)
from campaigns.services.setup import (
    MAX_ATTEMPTS_CAP,
    ROUND_TIMEOUT_MAX,
    ROUND_TIMEOUT_MIN,
    base_model_register,
    campaign_create,
    campaign_output_dir,
)

__all__ = [
    "MAX_ATTEMPTS_CAP",
    "ROUND_TIMEOUT_MAX",
    "ROUND_TIMEOUT_MIN",
    "ReportConflict",
    "ReportRefused",
    "attempts_used",
    "base_model_register",
    "campaign_cancel",
    "campaign_complete",
    "campaign_create",
    "campaign_fail",
    "campaign_follow",
    "campaign_launch",
    "campaign_output_dir",
    "campaign_resume",
    "campaign_resume_point",
    "campaign_run_config",
    "campaign_run_failed",
    "campaign_server_paths",
    "campaign_set_card_notes",
    "campaign_submit",
    "last_merged_round",
    "link_secret_sha256",
    "report_failure",
    "report_file",
    "report_link_check",
    "report_evaluation",
    "report_round",
    "round_files_stored",
    "round_sealed",
]
