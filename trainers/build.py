"""`tinylmm build`: compose a pretrained vision encoder, a fresh connector and a pretrained LLM into the
starting checkpoint of a recipe (model + processor, loadable through the Auto classes)."""

from __future__ import annotations

import argparse
import json
import logging
import os

from transformers import AutoImageProcessor, AutoTokenizer

from modeling_tinylmm import TinyLMMForConditionalGeneration
from processors import CHAT_TEMPLATES, IMAGE_TOKEN, TinyLMMProcessor, guess_template_name

from .checkpoint import set_generation_config
from .model_card import write_model_card
from .stages import write_stage

logger = logging.getLogger(__name__)


def _vision_normalisation(vision_model: str | os.PathLike) -> dict:
    """The vision checkpoint's own image mean / std when it ships an image processor (they win over the
    backbone table's defaults); nothing when it has none."""
    try:
        own = AutoImageProcessor.from_pretrained(vision_model)
    except (OSError, ValueError):
        return {}
    mean, std = getattr(own, "image_mean", None), getattr(own, "image_std", None)
    return {"image_mean": list(mean), "image_std": list(std)} if mean is not None and std is not None else {}


def compose(
    vision_model: str | os.PathLike,
    text_model: str | os.PathLike,
    connector_type: str = "mlp2x_gelu",
    chat_template: str | None = None,
    **config_kwargs,
) -> tuple[TinyLMMForConditionalGeneration, TinyLMMProcessor]:
    """A pretrained vision encoder + a new connector + a pretrained LLM (Hub ids or local folders), and the
    matching processor: ready to train or to save.

    `<image>` is added to the LLM's tokenizer as a special token and its id becomes the model's
    `image_token_id` (the embedding grows when the id lies past it). `chat_template`: a template name
    (`tinylmm.processors.CHAT_TEMPLATES`), Jinja, or None to pick the LLM family's from its tokenizer.
    `config_kwargs` are TinyLMMConfig fields (image_aspect_ratio, vision_feature_layer, connector_config …).
    """
    tokenizer = AutoTokenizer.from_pretrained(text_model)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    model = TinyLMMForConditionalGeneration.from_components(
        vision_model,
        text_model,
        connector_type=connector_type,
        image_token_id=image_token_id,
        vocab_size=len(tokenizer),
        **config_kwargs,
    )
    if tokenizer.pad_token is None:
        # TRL pads with EOS when there is no pad token; saying so here keeps the processor self-contained.
        tokenizer.pad_token = tokenizer.eos_token
    template = chat_template or guess_template_name(tokenizer)
    processor = TinyLMMProcessor.from_config(
        model.config, tokenizer=tokenizer, chat_template=template, **_vision_normalisation(vision_model)
    )
    set_generation_config(model, processor)  # generate stops at the template's end of turn
    logger.info(
        "composed %s + %s + %s; image token %r = id %d; chat template %s %s",
        vision_model,
        connector_type,
        text_model,
        IMAGE_TOKEN,
        image_token_id,
        template if template in CHAT_TEMPLATES else "(custom Jinja)",
        "(as given)"
        if chat_template
        else "(picked from the LLM tokenizer's turn tokens; --chat_template overrides it)",
    )
    return model, processor


def build(
    vision_model: str,
    text_model: str,
    output_dir: str,
    connector_type: str = "mlp2x_gelu",
    chat_template: str | None = None,
    **config_kwargs,
) -> str:
    """Compose (see `compose`) and save the starting checkpoint of a recipe; returns `output_dir`."""
    model, processor = compose(vision_model, text_model, connector_type, chat_template, **config_kwargs)
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
    write_model_card(output_dir, model, processor)
    logger.info("built %s", output_dir)
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
