"""Release pages and downloads. Files are looked up in the database, never by a client-given path."""

from __future__ import annotations

from pathlib import Path

from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from releases.models import Release, ReleaseFile


@require_safe
def release_list(request: HttpRequest) -> HttpResponse:
    releases = Release.objects.select_related("campaign").order_by("-created_at")
    return render(request, "releases/list.html", {"releases": releases})


@require_safe
def release_detail(request: HttpRequest, org: str, name: str) -> HttpResponse:
    release = Release.objects.filter(repo_id=f"{org}/{name}").order_by("-created_at").first()
    if release is None:
        raise Http404("no such release")
    return render(request, "releases/detail.html", {"release": release, "files": release.files.all()})


@require_safe
def release_file(request: HttpRequest, org: str, name: str, revision: str, path: str) -> FileResponse:
    entry = (
        ReleaseFile.objects.select_related("release")
        .filter(release__repo_id=f"{org}/{name}", release__revision=revision, path=path)
        .first()
    )
    if entry is None:
        raise Http404("no such file in this release")
    response = FileResponse((Path(entry.release.path) / entry.path).open("rb"), as_attachment=True, filename=entry.path)
    response["ETag"] = f'"{entry.sha256}"'
    response["X-Content-SHA256"] = entry.sha256
    return response
