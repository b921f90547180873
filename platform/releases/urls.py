from __future__ import annotations

from django.urls import path

from releases import views

urlpatterns = [
    path("releases/", views.release_list, name="release-list"),
    path("releases/<slug:org>/<slug:name>/", views.release_detail, name="release-detail"),
    path("releases/<slug:org>/<slug:name>/<str:revision>/<str:path>", views.release_file, name="release-file"),
]
