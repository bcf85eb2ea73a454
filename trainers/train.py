"""`tinylmm train --config RECIPE [--key value …]`: one stage of a recipe (a packaged recipe's name, as
`tinylmm recipes` lists them, or a YAML file).

The YAML and the command line fill four dataclasses (TRL's `TrlParser`): ModelArguments, DataArguments,
RecipeArguments and TRL's SFTConfig (learning rate, schedule, batch size, output_dir, report_to …).
"""

from __future__ import annotations

import argparse
import logging

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from trl import SFTConfig, TrlParser

import processors  # noqa: F401
from modeling_tinylmm import TinyLMMForConditionalGeneration

from .arguments import DataArguments, ModelArguments, RecipeArguments
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


def make_parser(prog: str = "tinylmm train") -> TrlParser:
    return TrlParser(
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


def parse(argv: list[str]) -> tuple[ModelArguments, DataArguments, RecipeArguments, SFTConfig]:
    return make_parser().parse_args_and_config(_with_recipe_path(argv))


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


def load_start(model_args: ModelArguments, recipe: RecipeArguments, training_args: SFTConfig):
    """The starting checkpoint and its processor, after checking it is what the stage expects."""
    path = model_args.model_name_or_path
    if path is None:
        raise ValueError(
            "no starting checkpoint: set model_name_or_path (a `tinylmm build` folder or a stage output)."
        )
    trust = training_args.trust_remote_code
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
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
