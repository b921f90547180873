from __future__ import annotations

from django.urls import path

from campaigns import views

urlpatterns = [
    path("api/v1/campaigns/<int:campaign_id>/server-config", views.server_config, name="campaign-server-config"),
    path("api/v1/base-models", views.base_models, name="base-models"),
    path("api/v1/campaigns/<int:campaign_id>/events", views.report_event, name="campaign-report-event"),
    path(
        "api/v1/campaigns/<int:campaign_id>/rounds/<int:round_number>/files/<str:name>",
        views.report_file,
        name="campaign-report-file",
    ),
]
