"""Catalog pages, browser downloads, the zip and the public key. Files are looked up in the database, never by
a client-given path; yanked releases are 404 for everyone but staff."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from releases import selectors, services
from releases.downloads import serve_file, stream
from releases.markdown_render import render_markdown, split_front_matter
from releases.signing import public_key_fingerprint, public_key_pem
from releases.zipstream import zip_stream


def _release_or_404(request: HttpRequest, org: str, name: str, revision: str = "main"):
    try:
        return selectors.release_get(repo_id=f"{org}/{name}", revision=revision, user=request.user)
    except (selectors.RepoNotFound, selectors.RevisionNotFound) as exc:
        raise Http404("no such release") from exc


@require_safe
def release_list(request: HttpRequest) -> HttpResponse:
    releases = list(selectors.release_list(user=request.user))
    return render(request, "releases/list.html", {"releases": releases})


@require_safe
def release_detail(request: HttpRequest, org: str, name: str, revision: str = "main") -> HttpResponse:
    release = _release_or_404(request, org, name, revision)
    provenance = selectors.release_provenance(release)
    card_entry = selectors.release_entry(release, "README.md")
    card = ""
    if card_entry is not None:
        card = selectors.entry_file(release, card_entry).read_text(encoding="utf-8", errors="replace")
    meta, body = split_front_matter(card)
    site = request.build_absolute_uri("/").rstrip("/")
    context = {
        "release": release,
        "entries": selectors.release_entries(release),
        "revisions": selectors.release_revisions(repo_id=release.repo_id, user=request.user),
        "card_meta": meta,
        "card_html": render_markdown(body),
        "provenance": provenance,
        "rounds": provenance.get("rounds", []),
        "site": site,
        "key_fingerprint": public_key_fingerprint(),
    }
    return render(request, "releases/detail.html", context)


@require_safe
def release_file(request: HttpRequest, org: str, name: str, revision: str, path: str) -> HttpResponse:
    release = _release_or_404(request, org, name, revision)
    entry = selectors.release_entry(release, path)
    if entry is None:
        raise Http404("no such file in this release")
    response, counts = serve_file(
        request,
        selectors.entry_file(release, entry),
        size=entry.size,
        sha256=entry.sha256,
        filename=entry.path,
        headers={"X-Repo-Commit": release.revision},
        attachment=True,
        immutable=revision == release.revision,
    )
    if counts:
        services.release_count_download(release=release, path=entry.path)
    return response


@require_safe
def release_zip(request: HttpRequest, org: str, name: str, revision: str) -> HttpResponse:
    release = _release_or_404(request, org, name, revision)
    folder = f"{release.name}-{release.revision[:12]}"
    members = [
        (f"{folder}/{e.path}", selectors.entry_file(release, e), e.size) for e in selectors.release_entries(release)
    ]
    stamp = release.created_at.timetuple()[:6]
    response = StreamingHttpResponse(stream(request, zip_stream(members, stamp)), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{folder}.zip"'
    response["X-Repo-Commit"] = release.revision
    if request.method == "GET":
        services.release_count_download(release=release, path=None)
    return response


@require_safe
def signing_key(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(public_key_pem(), content_type="application/x-pem-file")
    response["X-Key-Fingerprint"] = public_key_fingerprint()
    return response
