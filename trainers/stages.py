"""Stage records: each trained folder says which recipe stage made it (`tinylmm_stage.json`), so the next
stage can check that it starts from the checkpoint it expects, and of which architecture. A trained folder's
record also holds where it started, its data, the steps and tokens so far, and the records of the stages
before (`history`): its model card shows them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

STAGE_FILE = "tinylmm_stage.json"


def write_stage(folder: str | os.PathLike, recipe: dict) -> None:
    Path(folder, STAGE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")


def read_record(folder: str | os.PathLike) -> dict | None:
    """A folder's stage record, or None when it has none."""
    path = Path(folder, STAGE_FILE)
    return json.loads(path.read_text()) if path.is_file() else None


def lineage(folder: str | os.PathLike | None) -> list[dict]:
    """The records of the stages that made `folder`, oldest first (`build` first when it was built by
    tinylmm): its record's `history`, then the record itself."""
    record = read_record(folder) if folder is not None and os.path.isdir(folder) else None
    if record is None:
        return []
    history = record.pop("history", None) or []
    return [*history, record]


def trained_record(recipe: dict, start: str | None, data: dict | None, state, args) -> dict:
    """The record of a trained folder: the recipe stage, the folder it started from (absolute, so the record
    holds wherever it is read), its data, the steps taken so far, and the history of the starting folder."""
    if start is not None and os.path.isdir(start):
        start = os.path.abspath(start)
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    return {
        **recipe,
        "start": start,
        "data": data or {},
        "steps": state.global_step,
        "epochs": round(state.epoch, 4) if state.epoch is not None else None,
        "batch_size": batch,
        "learning_rate": args.learning_rate,
        "max_length": getattr(args, "max_length", None),
        "history": lineage(start),
    }


def tokens_trained(checkpoint: str | os.PathLike) -> int:
    """Tokens trained on up to a checkpoint: its stage record's count, else the last `num_tokens` its
    trainer state logged; 0 when neither says."""
    record = read_record(checkpoint) or {}
    if record.get("num_tokens") is not None:
        return int(record["num_tokens"])
    state = Path(checkpoint, "trainer_state.json")
    logged = json.loads(state.read_text()).get("log_history", []) if state.is_file() else []
    counts = [entry["num_tokens"] for entry in logged if "num_tokens" in entry]
    return int(counts[-1]) if counts else 0


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
