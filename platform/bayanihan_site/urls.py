from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from bayanihan_site.throttle import login_throttled

urlpatterns = [
    # Before admin.site.urls so that this path, not the admin's own, answers: same view, with the login limit.
    path("admin/login/", login_throttled(admin.site.login)),
    path("admin/", admin.site.urls),
    path("console/", include("console.urls")),
    path("", include("community.urls")),
    path("", include("console.contributor_urls")),  # /me/: reads every app, so it lives at the top
    path("", include("campaigns.urls")),
    path("", include("releases.urls")),
]
