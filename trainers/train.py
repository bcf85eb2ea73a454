"""`tinylmm train --config RECIPE [--key value …]`: one stage of a recipe (a packaged recipe's name, as
`tinylmm recipes` lists them, or a YAML file).

The YAML and the command line fill four dataclasses (TRL's `TrlParser`): ModelArguments, DataArguments,
RecipeArguments and TRL's SFTConfig (learning rate, schedule, batch size, output_dir, report_to …).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from trl import SFTConfig, TrlParser

import processors  # noqa: F401
from modeling_tinylmm import TinyLMMForConditionalGeneration

from .arguments import (
    RENAMED_TRAINING_FIELDS,
    DataArguments,
    ModelArguments,
    RecipeArguments,
    training_field,
    training_fields,
)
from .checkpoint import check_writable
from .collator import SKIPPED_KEY, TinyLMMCollator
from .data import load_training_data
from .recipes import recipe_path
from .stages import check_architecture, check_stage
from .trainer import TinyLMMTrainer

logger = logging.getLogger(__name__)

PARTS = TinyLMMForConditionalGeneration.parts
DATACLASSES = (ModelArguments, DataArguments, RecipeArguments, SFTConfig)


EXAMPLES = """examples:
  tinylmm train --config base_align --model_name_or_path checkpoints/base/build
  tinylmm train --config base_sft --learning_rate 1e-5 --report_to wandb
  tinylmm train --config my_recipe.yaml --resume_from_checkpoint True
  accelerate launch --config_file examples/accelerate/ddp.yaml -m trainers.cli train --config base_sft
(`tinylmm recipes` lists the packaged recipes.)"""


class StageParser(TrlParser):
    """TrlParser in which each renamed training option (`activation_checkpointing`, `gradient_checkpointing`
    before transformers 5.24) is one option under either name, in the YAML and on the command line, stored
    under the installed transformers' name. Where the old name is deprecated, nothing reaches it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for new, old in RENAMED_TRAINING_FIELDS.items():
            name = training_field(new)
            other = old if name == new else new
            main = self._option_string_actions[f"--{name}"]
            stale = self._option_string_actions.get(f"--{other}")
            # TRL's default for the old field (checkpointing on) moves to the new one.
            default = stale.default if stale is not None and main.default is None else main.default
            for action in self._actions:
                if action.dest == other:  # the deprecated field's options, `--no_…` too, set the new one
                    action.dest = name
            for option in (f"--{other}", f"--{other.replace('_', '-')}"):
                if option not in self._option_string_actions:  # a name the installed release lacks
                    main.option_strings.append(option)
                    self._option_string_actions[option] = main
            # The deprecated field itself stays None, so transformers has nothing to warn of.
            self.set_defaults(**{name: default}, **({other: None} if stale is not None else {}))

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        return super().set_defaults_with_config(**training_fields(kwargs))


def make_parser(prog: str = "tinylmm train") -> TrlParser:
    return StageParser(
        DATACLASSES, prog=prog, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def _with_recipe_path(argv: list[str]) -> list[str]:
    """`--config NAME` names a packaged recipe unless NAME is a file."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            argv[i + 1] = str(recipe_path(argv[i + 1]))
        elif arg.startswith("--config="):
            argv[i] = f"--config={recipe_path(arg.partition('=')[2])}"
    return argv


def _option(argv: list[str], key: str) -> tuple[bool, str | None]:
    """(whether `--key` is on the command line, its value: None for a bare flag), either spelling."""
    names = {f"--{key}", f"--{key.replace('_', '-')}"}
    found, value = False, None
    for i, arg in enumerate(argv):
        name, eq, given = arg.partition("=")
        if name in names:
            found = True
            if eq:
                value = given
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
            else:
                value = None
    return found, value


def _recipe_values(argv: list[str]) -> dict:
    """The recipe file's mapping (empty without --config)."""
    found, path = _option(argv, "config")
    return (yaml.safe_load(Path(path).read_text()) or {}) if found and path else {}


def _true(value) -> bool:
    return value is None or str(value).strip().lower() in ("true", "1", "yes")


def _fp32_without_bf16_device(argv: list[str], recipe: dict) -> list[str]:
    """On a machine without a bf16-capable GPU, a stage that asks for bf16 (every packaged recipe does, and
    TRL's default does) trains in fp32, with a notice, instead of failing in TrainingArguments."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    if is_torch_bf16_gpu_available() or is_torch_xla_available():
        return argv
    given, value = _option(argv, "bf16")
    asked = _true(value) if given else recipe.get("bf16", True) is not False
    use_cpu_given, use_cpu = _option(argv, "use_cpu")
    if not asked or (_true(use_cpu) if use_cpu_given else recipe.get("use_cpu", False)):
        return argv  # fp32 asked for, or bf16 on the CPU on purpose (use_cpu)
    logger.warning(
        "bf16 asked for (%s), but this machine has no GPU that supports it: training in fp32 instead. "
        "Set --bf16 false to silence this, or --use_cpu true to train in bf16 on the CPU.",
        "--bf16" if given else ("the recipe's bf16: true" if "bf16" in recipe else "TRL's default"),
    )
    return [*argv, "--bf16", "false"]


def _check_image_folder(argv: list[str], recipe: dict, data: DataArguments) -> None:
    """A --data_path given on the command line while image_folder is still the recipe's: say so, naming both
    (the recipe's folder is rarely where the new data's images are)."""
    if not _option(argv, "data_path")[0] or _option(argv, "image_folder")[0]:
        return
    folder = recipe.get("image_folder")
    if not folder or data.image_folder != folder:
        return
    missing = "" if os.path.isdir(folder) else ", which does not exist"
    logger.warning(
        "--data_path %s replaces the recipe's data_path (%s), but image_folder is still the recipe's: %s%s. "
        "Relative image paths in %s are looked up there; pass --image_folder with the folder they are "
        "relative to.",
        data.data_path,
        recipe.get("data_path"),
        folder,
        missing,
        data.data_path,
    )


def parse(argv: list[str]) -> tuple[ModelArguments, DataArguments, RecipeArguments, SFTConfig]:
    argv = _with_recipe_path(argv)
    recipe = _recipe_values(argv)
    args = make_parser().parse_args_and_config(_fp32_without_bf16_device(argv, recipe))
    _check_image_folder(argv, recipe, args[1])
    return args


def quantization_config(recipe: RecipeArguments):
    """QLoRA's 4-bit config for the LLM (vision tower, connector and head stay in full precision)."""
    if not recipe.load_in_4bit:
        return None
    if not torch.cuda.is_available():
        raise RuntimeError(
            "load_in_4bit (the qlora recipe) needs a CUDA GPU: bitsandbytes 4-bit layers do not run on the CPU. "
            "Use the lora recipe on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "load_in_4bit (the qlora recipe) needs bitsandbytes: pip install bitsandbytes"
        ) from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        # Only the LLM body is quantised: the vision tower, the connector and the head keep full precision.
        llm_int8_skip_modules=sorted(
            {
                prefix.rsplit(".", 1)[-1]
                for part in ("vision_tower", "connector", "lm_head")
                for prefix in PARTS[part]
            }
        ),
    )


# What a Hub model id looks like ("org/name"); anything else that is not a folder is a missing folder.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _start_hint(recipe: RecipeArguments) -> str:
    if recipe.init_stage == "build":
        return (
            "model_name_or_path should point at the output of `tinylmm build`: build the starting "
            "checkpoint first (the packaged recipes' headers show the command), or pass "
            "--model_name_or_path with its folder."
        )
    if recipe.init_stage:
        return (
            "model_name_or_path should point at the output of the previous stage, "
            f"{recipe.init_stage!r} (its output_dir): train that stage first, or pass --model_name_or_path "
            "with its folder."
        )
    return "model_name_or_path should point at the output of `tinylmm build` or of the previous stage."


def _start_config(path: str, recipe: RecipeArguments, trust: bool):
    """The starting checkpoint's config; a missing folder is said to be one, not taken for a Hub id."""
    if os.path.isfile(path):
        raise ValueError(f"model_name_or_path {path} is a file; give the checkpoint's folder.")
    if not os.path.isdir(path) and not _HUB_ID.fullmatch(path):
        raise FileNotFoundError(f"model_name_or_path {path}: no such folder. {_start_hint(recipe)}")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust)
    except OSError as err:
        if os.path.isdir(path):
            raise
        raise FileNotFoundError(
            f"model_name_or_path {path}: no such folder, and no Hub model of that name could be loaded "
            f"({str(err).splitlines()[0]}). {_start_hint(recipe)}"
        ) from None


def load_start(model_args: ModelArguments, recipe: RecipeArguments, training_args: SFTConfig):
    """The starting checkpoint and its processor, after checking it is what the stage expects."""
    path = model_args.model_name_or_path
    if path is None:
        raise ValueError(
            "no starting checkpoint: set model_name_or_path (a `tinylmm build` folder or a stage output)."
        )
    trust = training_args.trust_remote_code
    config = _start_config(path, recipe, trust)
    check_architecture(config, recipe.architecture, path)
    check_stage(path, recipe.init_stage)
    kwargs = {"trust_remote_code": trust}
    if model_args.dtype is not None:
        kwargs["dtype"] = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization = quantization_config(recipe)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust)
    return model, processor


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    recipe: RecipeArguments,
    training_args: SFTConfig,
    callbacks: list | None = None,
) -> TinyLMMTrainer:
    """Run one stage: load, train, save the final folder (model, processor, stage record)."""
    check_writable(training_args.output_dir)  # before any loading: a run that cannot be saved is lost
    if recipe.load_in_4bit:
        quantization_config(recipe)  # fail before any loading
    model, processor = load_start(model_args, recipe, training_args)
    if data_args.data_path is None:
        raise ValueError("no training data: set data_path.")
    load = dict(
        split=data_args.dataset_split,
        name=data_args.dataset_config,
        image_folder=data_args.image_folder,
        streaming=data_args.streaming,
        skip_missing_images=data_args.skip_missing_images,
    )
    with training_args.main_process_first(desc="loading data"):  # one process writes the Arrow cache
        train_dataset, skipped = load_training_data(data_args.data_path, **load)
        eval_dataset = None
        if data_args.eval_data_path:
            eval_dataset, _ = load_training_data(data_args.eval_data_path, **load)
    collator = TinyLMMCollator(
        processor,
        max_length=training_args.max_length,
        chat_template=data_args.chat_template,
        image_folder=data_args.image_folder,
        skip_missing_images=data_args.skip_missing_images,
        pad_to_multiple_of=training_args.pad_to_multiple_of,
    )
    trainer = TinyLMMTrainer(
        model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        data_collator=collator,
        recipe=recipe,
        group_by_modality_length=data_args.group_by_modality_length,
        callbacks=callbacks,
        data_source={"data_path": data_args.data_path, "image_folder": data_args.image_folder},
    )
    trainer.data_stats[SKIPPED_KEY] += skipped
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_final(merge_lora=recipe.merge_lora)
    return trainer


# -- the CLI subcommand ------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one stage of a recipe: tinylmm train --config base_align [--key value …]",
        add_help=False,  # --help goes to the TrlParser below, which knows every option
    )
    parser.set_defaults(passthrough=True)


def run(args: argparse.Namespace) -> int:
    model_args, data_args, recipe, training_args = parse(args.argv)
    train(model_args, data_args, recipe, training_args)
    return 0
