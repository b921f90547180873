from __future__ import annotations

from django.urls import path

from console import views

app_name = "console"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("campaigns/", views.campaign_list, name="campaigns"),
    path("campaigns/new", views.campaign_new, name="campaign-new"),
    path("campaigns/<int:pk>/", views.campaign_detail, name="campaign"),
    path("campaigns/<int:pk>/live", views.campaign_live, name="campaign-live"),
    path("campaigns/<int:pk>/launch", views.campaign_launch, name="campaign-launch"),
    path("campaigns/<int:pk>/cancel", views.campaign_cancel, name="campaign-cancel"),
    path("campaigns/<int:pk>/resume", views.campaign_resume, name="campaign-resume"),
    path("campaigns/<int:pk>/notes", views.campaign_notes, name="campaign-notes"),
    path("campaigns/<int:pk>/publish", views.campaign_publish, name="campaign-publish"),
    path("people/", views.people, name="people"),
    path("contributors/<int:pk>/status", views.contributor_status, name="contributor-status"),
    path("nodes/<int:pk>/suspend", views.node_suspend, name="node-suspend"),
    path("releases/", views.release_list, name="releases"),
    path("releases/<int:pk>/yank", views.release_yank, name="release-yank"),
    path("audit/", views.audit_log, name="audit"),
]
