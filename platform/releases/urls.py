from __future__ import annotations

from django.urls import path

from releases import hf_api, views

# Order matters: the Hub-style `<org>/<name>/resolve/...` route sits at the site root, so it comes last and
# has a literal `resolve` segment; `/admin/`, `/api/v1/...` and `/releases/...` are matched before it.
urlpatterns = [
    path("releases/", views.release_list, name="release-list"),
    path("releases/signing-key.pub", views.signing_key, name="release-signing-key"),
    path("releases/<slug:org>/<slug:name>/", views.release_detail, name="release-detail"),
    path("releases/<slug:org>/<slug:name>/<str:revision>.zip", views.release_zip, name="release-zip"),
    path("releases/<slug:org>/<slug:name>/<str:revision>/", views.release_detail, name="release-revision"),
    path("releases/<slug:org>/<slug:name>/<str:revision>/<str:path>", views.release_file, name="release-file"),
    # Hugging Face Hub read API (huggingface_hub with HF_ENDPOINT=<site>).
    path("api/models/<slug:org>/<slug:name>", hf_api.model_info, name="hf-model-info"),
    path("api/models/<slug:org>/<slug:name>/revision/<str:revision>", hf_api.model_info, name="hf-model-revision"),
    path("api/models/<slug:org>/<slug:name>/tree/<str:revision>", hf_api.model_tree, name="hf-model-tree"),
    path("api/models/<slug:org>/<slug:name>/tree/<str:revision>/<path:subpath>", hf_api.model_tree),
    path("<slug:org>/<slug:name>/resolve/<str:revision>/<path:path>", hf_api.resolve, name="hf-resolve"),
]
