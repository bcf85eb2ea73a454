"""What a saved folder holds, and how it is written and resumed from.

- every saved folder (build, stage output, intermediate checkpoint, merge) carries a generation config that
  stops at the chat template's end of turn, not only at the LLM's EOS (`set_generation_config`), and a model
  card, README.md (trainers/model_card.py: `write_model_card(folder, model, processor, source=…)`);
- checkpoints are written into `tmp-checkpoint-N/checkpoint-N` and renamed to `checkpoint-N` once complete,
  so a folder named `checkpoint-N` (what transformers' `get_last_checkpoint` and `--resume_from_checkpoint
  True` pick) is always whole; a kill or a full disk mid-save leaves only a `tmp-` folder;
- a checkpoint to resume from is checked before training starts: optimizer and scheduler states present,
  trainer state readable (`check_resumable`); `True` / "true" means the newest one (`resolve_resume`);
- the output folder is checked for writing before any work is done (`check_writable`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from processors.chat_templates import end_of_turn_ids

logger = logging.getLogger(__name__)

STAGING_PREFIX = "tmp-"
TRAINER_STATE = "trainer_state.json"
SCHEDULER = "scheduler.pt"
_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the folder and what is wrong."""


# -- generation config -------------------------------------------------------------------------------------


def set_generation_config(model, processor, chat_template: str | None = None) -> list[int]:
    """Make `model.generation_config` stop where a reply ends under the processor's chat template (and
    `chat_template` too, when a stage trains with another one): its end-of-turn token and the LLM's EOS.
    A Qwen2 base LLM's EOS is `<|endoftext|>` while chatml ends a turn with `<|im_end|>`; without this,
    `generate` and `pipeline` run past the end of the turn. Returns the stop ids."""
    tokenizer = getattr(processor, "tokenizer", processor)
    stop = set(end_of_turn_ids(getattr(processor, "chat_template", None), tokenizer))
    if chat_template is not None:
        stop |= set(end_of_turn_ids(chat_template, tokenizer))
    stop = sorted(stop)
    config = model.generation_config
    config.eos_token_id = stop if len(stop) > 1 else stop[0]
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    elif config.pad_token_id is None:
        config.pad_token_id = stop[0]
    return stop


# -- the output folder -------------------------------------------------------------------------------------


def check_writable(output_dir: str | os.PathLike) -> None:
    """Raise unless files can be created in `output_dir` (made if missing): found now, not at the final save
    hours later."""
    output_dir = os.fspath(output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".tinylmm-write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise PermissionError(
            f"output_dir {output_dir} is not writable ({reason}); nothing would be saved. Choose another "
            "--output_dir or make this one writable."
        ) from None


# -- checkpoints ------------------------------------------------------------------------------------------


def staging_folder(run_dir: str, step: int) -> str:
    """Where checkpoint `step` is written before it is complete (not matched by `checkpoint-*`)."""
    return os.path.join(run_dir, f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-{step}")


def publish(staged: str, final: str) -> None:
    """Rename a complete checkpoint folder into place. An older folder of the same name (a re-run saving
    the same step) is moved aside first and removed after: a kill in between leaves no `final`, never a
    mixed one."""
    parent = os.path.dirname(staged)
    replaced = None
    if os.path.exists(final):
        replaced = os.path.join(parent, "replaced")
        os.rename(final, replaced)
    os.rename(staged, final)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    if os.path.basename(parent).startswith(STAGING_PREFIX):
        shutil.rmtree(parent, ignore_errors=True)


def remove_incomplete(output_dir: str | os.PathLike) -> list[str]:
    """Delete the `tmp-checkpoint-N` folders that interrupted saves left in `output_dir`; returns them."""
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return []
    removed = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name.startswith(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.warning(
            "removed %d incomplete checkpoint(s) left by an interrupted save: %s", len(removed), removed
        )
    return removed


def resolve_resume(value: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """`resume_from_checkpoint` as given on the command line or in code -> a checkpoint folder or None.
    True / "true" (any case): the newest complete `checkpoint-N` in `output_dir`, as in transformers."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if value is None or value is False:
        return None
    output_dir = os.fspath(output_dir)
    if value is True:
        found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if found is None:
            raise CheckpointError(
                f"resume_from_checkpoint=True: no {PREFIX_CHECKPOINT_DIR}-N folder in {output_dir} to resume "
                "from. Give a checkpoint folder, or leave resume_from_checkpoint unset to start afresh."
            )
        logger.info("resuming from the newest checkpoint in %s: %s", output_dir, found)
        return found
    value = os.fspath(value)
    if not os.path.isdir(value):
        raise CheckpointError(f"checkpoint to resume from not found: {value}")
    return value


def check_resumable(checkpoint: str, deepspeed: bool = False) -> dict:
    """Raise unless `checkpoint` holds what resuming needs: a readable trainer state and (outside DeepSpeed,
    which keeps them in its own folders) the optimizer and scheduler states, without which transformers would
    silently restart both. Returns the trainer state."""
    state_file = os.path.join(checkpoint, TRAINER_STATE)
    missing = [] if os.path.isfile(state_file) else [TRAINER_STATE]
    if not deepspeed:
        names = os.listdir(checkpoint)
        has_optimizer = any(n in _OPTIMIZER_FILES for n in names) or any(
            "optimizer" in n and os.path.isdir(os.path.join(checkpoint, n))
            for n in names  # FSDP: a folder
        )
        if not has_optimizer:
            missing.append(_OPTIMIZER_FILES[0])
        if SCHEDULER not in names:
            missing.append(SCHEDULER)
    if missing:
        raise CheckpointError(
            f"cannot resume from {checkpoint}: {', '.join(missing)} missing, so the optimizer and "
            "learning-rate schedule would silently restart. Resume from a complete checkpoint; a folder "
            "saved with save_only_model=True (or a stage's final folder) can only start a new stage, as "
            "model_name_or_path."
        )
    try:
        with open(state_file, encoding="utf-8") as f:
            state = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{state_file}: not valid JSON ({err}); the checkpoint is damaged. Resume "
            "from an earlier checkpoint."
        ) from None
    if not isinstance(state, dict) or "global_step" not in state:
        raise CheckpointError(
            f"{state_file}: not a trainer state (no global_step); the checkpoint is damaged."
        )
    return state
