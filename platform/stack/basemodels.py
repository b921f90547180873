"""Making sure a base model is on disk and registered, whichever kind the user asked for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from campaigns.models import BaseCheckpoint
from campaigns.services.setup import base_model_register
from federation.basemodel import SMOLLM2_ID, prepare_smollm2


def ensure_base_model(
    *, model_path: str | None = None, tiny: bool = False, progress: Callable[[str], None] = print
) -> BaseCheckpoint:
    models = Path(settings.VAR_DIR) / "models"
    if model_path:
        path = Path(model_path).expanduser().resolve()
        return base_model_register(path=path, name=path.name.lower().replace("_", "-")[:100])
    if tiny:
        # testbed/ is checkout-only tooling (never installed): imported only when the tiny model is asked for.
        from testbed.tiny import build_tiny_checkpoint

        path = build_tiny_checkpoint(models / "tiny-llama")
        return base_model_register(
            path=path, name="tiny-llama", hf_id="bayanihan/tiny-random-llama", note="Random weights, for tests."
        )
    path = models / "smollm2-135m-instruct"
    prepare_smollm2(path, Path(settings.VAR_DIR) / "cache", progress=progress)
    return base_model_register(path=path, name="smollm2-135m-instruct", hf_id=SMOLLM2_ID)
