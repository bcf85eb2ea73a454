"""Command-line / YAML arguments of `tinylmm train`, besides TRL's `SFTConfig`.

A recipe YAML is one flat mapping over all four dataclasses (TRL's `TrlParser` convention); any key can be
overridden on the command line (`--learning_rate 1e-4`, `--module_lrs '{"vision_tower": 1e-6}'`).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


def _json(value, name: str):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"--{name} must be a JSON object, got {value!r} ({err}).") from None
    return value


@dataclass
class ModelArguments:
    """The checkpoint a stage starts from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Starting checkpoint: a `tinylmm build` folder or the output of the previous stage."
        },
    )
    dtype: str | None = field(
        default=None, metadata={"help": "Weights dtype when loading: float32, bfloat16, float16 or auto."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel: eager, sdpa, flash_attention_2 …"}
    )


@dataclass
class DataArguments:
    """Where the samples come from and how they are read."""

    data_path: str | None = field(
        default=None,
        metadata={
            "help": "LLaVA JSON / JSONL file, a local data file or folder with `messages` (+ `images`) rows, "
            "or a Hub dataset id."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_data_path: str | None = field(
        default=None, metadata={"help": "Optional evaluation data, same formats."}
    )
    image_folder: str | None = field(
        default=None, metadata={"help": "Folder that relative image / video paths are resolved against."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the data (needs max_steps)."})
    skip_missing_images: bool = field(
        default=False,
        metadata={
            "help": "Skip samples whose image files are missing (counted and reported) instead of failing."
        },
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Template for this stage: a name (plain for alignment, chatml, llama3, phi3, gemma, vicuna) or "
            "Jinja; default: the processor's own."
        },
    )
    group_by_modality_length: bool = field(
        default=False,
        metadata={"help": "Batch samples of one modality and similar length together (less padding)."},
    )


@dataclass
class RecipeArguments:
    """What a stage trains, at which learning rate, starting from which stage's checkpoint."""

    recipe: str | None = field(default=None, metadata={"help": "Recipe name (base, share, onevision …)."})
    stage: str | None = field(
        default=None, metadata={"help": "Stage name within the recipe (align, sft, 1.5 …)."}
    )
    init_stage: str | None = field(
        default=None,
        metadata={
            "help": "Stage that made the starting checkpoint, `<recipe>/<stage>` or `build`; checked against the "
            "record the checkpoint folder carries."
        },
    )
    architecture: dict | str | None = field(
        default=None,
        metadata={
            "help": "What the starting checkpoint must be: keys vision, text, connector, image_aspect_ratio, "
            "values a model type / name or a list of them (regular expressions)."
        },
    )
    train_modules: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={
            "help": "Modules that train: connector, language_model, vision_tower, lm_head, all, or dotted paths "
            "such as vision_tower.encoder.layers.12+ (blocks from 12 on)."
        },
    )
    module_lrs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Per-module learning rates, e.g. {vision_tower: 2.0e-6}; others use learning_rate."
        },
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of full weights."})
    lora_modules: list[str] = field(
        default_factory=lambda: ["language_model"],
        metadata={"help": "Modules whose linear layers get LoRA adapters (language_model, vision_tower …)."},
    )
    lora_r: int = field(default=128, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    merge_lora: bool = field(
        default=True, metadata={"help": "Merge the adapters into the weights of the saved final checkpoint."}
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the LLM in 4 bits (needs CUDA and bitsandbytes)."}
    )

    def __post_init__(self):
        self.module_lrs = _json(self.module_lrs, "module_lrs")
        self.architecture = _json(self.architecture, "architecture")
        if isinstance(self.train_modules, str):
            self.train_modules = [self.train_modules]
        if self.load_in_4bit and not self.use_lora:
            raise ValueError("load_in_4bit (QLoRA) trains LoRA adapters: set use_lora too.")

    @property
    def stage_id(self) -> str | None:
        return f"{self.recipe}/{self.stage}" if self.recipe and self.stage else None

    def record(self) -> dict:
        """What the output folder says about the stage that made it."""
        return {
            "stage_id": self.stage_id,
            "recipe": self.recipe,
            "stage": self.stage,
            "init_stage": self.init_stage,
            "train_modules": list(self.train_modules),
            "module_lrs": self.module_lrs,
            "use_lora": self.use_lora,
            "lora_modules": list(self.lora_modules) if self.use_lora else None,
        }


class _OldSpelling(argparse.Action):
    """An option's old kebab-case spelling: does what the snake_case option does, and says so."""

    def __init__(self, option_strings, dest, new: argparse.Action, **kwargs):
        super().__init__(option_strings, dest, nargs=new.nargs, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        logger.warning("%s is deprecated; use %s.", option_string, self.new.option_strings[0])
        if self.new.nargs == 0:
            self.new(parser, namespace, [], option_string)
        else:
            setattr(namespace, self.dest, values)


def add_kebab_aliases(parser: argparse.ArgumentParser) -> None:
    """Accept `--batch-size` for `--batch_size` (the spelling before options followed transformers' and TRL's
    snake_case), with a deprecation notice; hidden from --help."""
    for action in list(parser._actions):
        for option in action.option_strings:
            if option.startswith("--") and "_" in option:
                parser.add_argument(
                    option.replace("_", "-"),
                    action=_OldSpelling,
                    dest=action.dest,
                    new=action,
                    type=action.type,
                    choices=action.choices,
                )


# transformers 5.24 renamed these TrainingArguments fields: the old names warn (and go in v6), and releases
# before 5.24 know only them. Recipes, the command line and our code may use either name; it is passed on
# under the name the installed release has.
RENAMED_TRAINING_FIELDS = {
    "activation_checkpointing": "gradient_checkpointing",
    "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs",
}


def training_field(name: str) -> str:
    """The installed transformers' name for TrainingArguments (SFTConfig) field `name`, given by either name."""
    from transformers import TrainingArguments

    for new, old in RENAMED_TRAINING_FIELDS.items():
        if name in (new, old):
            return new if new in TrainingArguments.__dataclass_fields__ else old
    return name


def training_fields(values: dict) -> dict:
    """`values` (SFTConfig keywords, a recipe's keys) with each renamed field under the installed name."""
    for new, old in RENAMED_TRAINING_FIELDS.items():
        if new in values and old in values:
            raise ValueError(
                f"{new} and {old} are one option ({old} is its old name): give it once, as {new}."
            )
    return {training_field(key): value for key, value in values.items()}
