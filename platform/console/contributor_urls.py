"""Routes of a contributor's own page. Kept apart from `console.urls` (the staff console, namespace `console:`,
every route staff only) and included at the site root, so the URLs and their names stay `/me/` and
`contributor-home`, `/me/tokens` and `token-create`."""

from __future__ import annotations

from django.urls import path

from console import contributor_views

urlpatterns = [
    path("me/", contributor_views.home, name="contributor-home"),
    path("me/tokens", contributor_views.token_create, name="token-create"),
]
