"""`tinylmm build`: compose a pretrained vision encoder, a fresh connector and a pretrained LLM into the
starting checkpoint of a recipe (model + processor, loadable through the Auto classes)."""

from __future__ import annotations

import argparse
import json
import logging

from transformers import AutoConfig, AutoTokenizer

from modeling_tinylmm import TinyLMMForConditionalGeneration
from processors.processing_tinylmm import TinyLMMProcessor

from .stages import write_stage

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"


def _text_vocab_size(text_model: str) -> int:
    config = AutoConfig.from_pretrained(text_model)
    return config.get_text_config().vocab_size


def build(
    vision_model: str,
    text_model: str,
    output_dir: str,
    connector_type: str = "mlp2x_gelu",
    chat_template: str | None = None,
    **config_kwargs,
) -> str:
    """Build and save the starting checkpoint; returns `output_dir`.

    "<image>" is added to the LLM's tokenizer as a special token and its id becomes the model's
    `image_token_id` (the embedding matrix grows when the id lies past it). `config_kwargs` are
    TinyLMMConfig fields (image_aspect_ratio, vision_feature_layer, connector_config …).
    """
    tokenizer = AutoTokenizer.from_pretrained(text_model)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vocab = _text_vocab_size(text_model)
    model = TinyLMMForConditionalGeneration.from_components(
        vision_model,
        text_model,
        connector_type=connector_type,
        image_token_id=image_token_id,
        **config_kwargs,
    )
    if image_token_id >= vocab:
        model.resize_token_embeddings(max(len(tokenizer), image_token_id + 1))
    if tokenizer.pad_token is None:
        # TRL pads with EOS when there is no pad token; saying so here keeps the processor self-contained.
        tokenizer.pad_token = tokenizer.eos_token
    processor = TinyLMMProcessor.from_config(model.config, tokenizer=tokenizer, chat_template=chat_template)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    write_stage(
        output_dir,
        {
            "stage_id": "build",
            "vision_model": vision_model,
            "text_model": text_model,
            "connector_type": connector_type,
        },
    )
    logger.info("built %s: image token %r = id %d", output_dir, IMAGE_TOKEN, image_token_id)
    return output_dir


# -- the CLI subcommand ------------------------------------------------------------------------------


def _int_or_list(value: str):
    value = json.loads(value)
    if not isinstance(value, (int, list)):
        raise argparse.ArgumentTypeError("give an int or a JSON list of ints")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build",
        help="compose encoder + connector + LLM into a starting checkpoint",
        description="Compose a pretrained vision encoder and a pretrained LLM (Hub ids or local folders) with a "
        "new connector into a checkpoint folder with its processor.",
        epilog="examples:\n"
        "  tinylmm build --vision_model google/siglip-so400m-patch14-384 --text_model Qwen/Qwen2-0.5B \\\n"
        "    --output_dir checkpoints/base/build\n"
        "  tinylmm build --vision_model openai/clip-vit-large-patch14-336 --text_model microsoft/phi-2 \\\n"
        "    --connector_type dense_sti --chat_template vicuna --output_dir checkpoints/dense/build",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--vision_model", required=True, help="vision encoder: Hub id or folder (CLIP, SigLIP, …)"
    )
    parser.add_argument("--text_model", required=True, help="causal LM: Hub id or folder, with its tokenizer")
    parser.add_argument("--output_dir", required=True, help="where the checkpoint is written")
    parser.add_argument("--connector_type", default="mlp2x_gelu", help="registered connector name")
    parser.add_argument("--connector_config", type=json.loads, default=None, help="connector options (JSON)")
    parser.add_argument("--vision_feature_layer", type=_int_or_list, default=None, help="int or JSON list")
    parser.add_argument("--vision_feature_select_strategy", default=None, help="default | full | drop_first")
    parser.add_argument("--image_aspect_ratio", default=None, help="pad | resize | anyres | anyres_max_N")
    parser.add_argument("--image_grid_pinpoints", type=json.loads, default=None, help="JSON list of [h, w]")
    parser.add_argument(
        "--chat_template", default=None, help="template name or Jinja; default: from the tokenizer"
    )


def run(args: argparse.Namespace) -> int:
    options = {
        key: getattr(args, key)
        for key in (
            "connector_config",
            "vision_feature_layer",
            "vision_feature_select_strategy",
            "image_aspect_ratio",
            "image_grid_pinpoints",
        )
        if getattr(args, key) is not None
    }
    build(
        args.vision_model,
        args.text_model,
        args.output_dir,
        connector_type=args.connector_type,
        chat_template=args.chat_template,
        **options,
    )
    return 0
