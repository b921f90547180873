"""The read side of the Hugging Face Hub API, enough for huggingface_hub / transformers / peft with HF_ENDPOINT
pointing here: repo info, tree, and resolve (HEAD/GET). Errors carry the X-Error-Code the clients act on."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe

from releases import selectors, services
from releases.downloads import serve_file
from releases.models import Release

# Fixed texts only: a header never carries request text (a CR in a revision echoed here made Django answer 500 and
# uvicorn drop the connection). The JSON body may name what was asked; JSON escapes it.
_HEADER_MESSAGES = {
    "RepoNotFound": "Repository not found",
    "RevisionNotFound": "Invalid rev id",
    "EntryNotFound": "Entry not found",
}


def _error(code: str, message: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=404)
    response["X-Error-Code"] = code
    response["X-Error-Message"] = _HEADER_MESSAGES[code]
    return response


def _lookup(request: HttpRequest, org: str, name: str, revision: str) -> Release | JsonResponse:
    repo_id = f"{org}/{name}"
    try:
        return selectors.release_get(repo_id=repo_id, revision=revision, user=request.user)
    except selectors.RepoNotFound:
        return _error("RepoNotFound", f"Repository {repo_id} not found")
    except selectors.RevisionNotFound:
        return _error("RevisionNotFound", f"Invalid rev id: {revision}")


def _iso(release: Release) -> str:
    return release.created_at.isoformat().replace("+00:00", "Z")


@require_safe
def model_info(request: HttpRequest, org: str, name: str, revision: str = "main") -> HttpResponse:
    release = _lookup(request, org, name, revision)
    if isinstance(release, HttpResponse):
        return release
    entries = selectors.release_entries(release)
    base = release.campaign.base_model
    return JsonResponse(
        {
            "_id": f"bayanihan-{release.pk}",
            "id": release.repo_id,
            "modelId": release.repo_id,
            "author": release.org,
            "sha": release.revision,
            "lastModified": _iso(release),
            "createdAt": _iso(release),
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": release.download_count,
            "likes": 0,
            "library_name": "peft",
            "tags": ["peft", "lora", "federated-learning", "bayanihan", f"base_model:adapter:{base.hf_id}"],
            "cardData": {
                "base_model": base.hf_id,
                "base_model_relation": "adapter",
                "library_name": "peft",
                "license": base.license or "other",
            },
            "siblings": [{"rfilename": e.path, "size": e.size, "blobId": e.sha256} for e in entries],
            "usedStorage": sum(e.size for e in entries),
        }
    )


@require_safe
def model_tree(request: HttpRequest, org: str, name: str, revision: str, subpath: str = "") -> HttpResponse:
    release = _lookup(request, org, name, revision)
    if isinstance(release, HttpResponse):
        return release
    if subpath.strip("/"):  # a release is flat: there are no folders to list
        return _error("EntryNotFound", f"{subpath} does not exist on {revision}")
    # oid is a git blob id on the Hub; ours is the file's sha256 (the same value resolve sends as its ETag).
    tree = [
        {"type": "file", "path": e.path, "size": e.size, "oid": e.sha256} for e in selectors.release_entries(release)
    ]
    return JsonResponse(tree, safe=False)


@require_safe
def resolve(request: HttpRequest, org: str, name: str, revision: str, path: str) -> HttpResponse:
    release = _lookup(request, org, name, revision)
    if isinstance(release, HttpResponse):
        return release
    entry = selectors.release_entry(release, path)
    if entry is None:
        response = _error("EntryNotFound", f"{path} does not exist on {revision}")
        response["X-Repo-Commit"] = release.revision
        return response
    response, counts = serve_file(
        request,
        selectors.entry_file(release, entry),
        size=entry.size,
        sha256=entry.sha256,
        filename=entry.path,
        headers={"X-Repo-Commit": release.revision},
        immutable=revision == release.revision,
    )
    if counts:
        services.release_count_download(release=release, path=entry.path)
    return response
