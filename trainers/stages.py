"""Stage records: each trained folder says which recipe stage made it (`tinylmm_stage.json`), so the next
stage can check that it starts from the checkpoint it expects, and of which architecture."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

STAGE_FILE = "tinylmm_stage.json"


def write_stage(folder: str | os.PathLike, recipe: dict) -> None:
    Path(folder, STAGE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")


def read_stage(folder: str | os.PathLike) -> str | None:
    """The stage id a checkpoint folder was trained by; "build" for a `tinylmm build` folder; None if unknown."""
    path = Path(folder, STAGE_FILE)
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("stage_id")


def check_architecture(config, expected: dict | None, folder: str) -> None:
    """Raise when a checkpoint is not the architecture a recipe stage is written for."""
    if getattr(config, "model_type", None) != "tinylmm":
        raise ValueError(
            f"{folder} holds a {getattr(config, 'model_type', '?')!r} model, not a tinylmm checkpoint; build one "
            "with `tinylmm build` first."
        )
    actual = {
        "vision": config.vision_config.model_type,
        "text": config.text_config.model_type,
        "connector": config.connector_type,
        "image_aspect_ratio": config.image_aspect_ratio,
    }
    for key, want in (expected or {}).items():
        if key not in actual:
            raise ValueError(f"recipe architecture key {key!r} is unknown; known keys: {sorted(actual)}.")
        allowed = [want] if isinstance(want, str) else list(want)
        if not any(re.fullmatch(a, actual[key]) for a in allowed):
            raise ValueError(
                f"this stage expects a checkpoint with {key} {allowed}, but {folder} has {key} "
                f"{actual[key]!r} (architecture {actual}). Start from a checkpoint of the previous stage of the "
                "same recipe."
            )


def check_stage(folder: str, expected: str | None) -> None:
    """Raise when `folder` was made by another stage than the one the recipe starts from."""
    if expected is None or not os.path.isdir(folder):
        return
    actual = read_stage(folder)
    if actual is not None and actual != expected:
        raise ValueError(
            f"this stage starts from the checkpoint of stage {expected!r}, but {folder} was made by stage "
            f"{actual!r}."
        )
