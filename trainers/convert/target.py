"""Writing what a conversion makes: a model from a config and mapped weights, its chat template, and the
folder (weights, config, processor, generation config, model card)."""

from __future__ import annotations

import json
import logging
import os

import torch
from accelerate import init_empty_weights

from processors.chat_templates import CHAT_TEMPLATES, guess_template_name, resolve_chat_template

from ..checkpoint import check_writable, set_generation_config
from ..model_card import write_model_card
from .source import ConversionError

logger = logging.getLogger(__name__)

# Turn markers that identify a chat template's family, checked in this order.
_FAMILY_MARKERS = (
    ("chatml", ("<|im_start|>",)),
    ("llama3", ("<|start_header_id|>",)),
    ("phi3", ("<|assistant|>", "<|end|>")),
    ("gemma", ("<start_of_turn>",)),
    ("vicuna", ("ASSISTANT:",)),
    ("vicuna", ("USER:",)),
)


def build(model_class, config, weights: dict[str, torch.Tensor], what: str, droppable: tuple[str, ...] = ()):
    """(`model_class(config)` holding `weights`, the names of the weights left out). Tensors are taken over,
    not copied. Every weight the model has must be given, apart from an output head tied to the input
    embedding; a given weight the model does not have is an error unless it lies under a `droppable` prefix
    (the vision blocks after the last layer the model reads, a pooling head): those are left out and
    returned, so that the caller can say how many."""
    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    expected = set(model.state_dict())
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if config.tie_word_embeddings else set()
    missing = sorted(expected - set(weights) - tied)
    unexpected = sorted(set(weights) - expected)
    dropped = [k for k in unexpected if droppable and k.startswith(droppable)]
    unexpected = [k for k in unexpected if k not in set(dropped)]
    weights = {k: v for k, v in weights.items() if k in expected}
    if missing or unexpected:
        raise ConversionError(
            f"{what}: the weights do not fit the converted model: missing {missing[:8]}"
            f"{' …' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}."
        )
    model.load_state_dict(weights, strict=False, assign=True)
    if tied:
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise ConversionError(f"{what}: weights not filled in: {left[:8]}")
    return model.eval(), dropped


def source_chat_template(folder: str, tokenizer) -> str | None:
    """The chat template a source checkpoint ships, wherever transformers keeps it."""
    path = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    for name in ("chat_template.json", "processor_config.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                template = json.load(f).get("chat_template")
            if template:
                return template
    return getattr(tokenizer, "chat_template", None)


def template_family(template: str | None, tokenizer) -> str:
    """The tinylmm chat template family whose turn markers a source template writes; without a template,
    the family guessed from the tokenizer's vocabulary."""
    if template:
        for family, markers in _FAMILY_MARKERS:
            if all(m in template for m in markers):
                return family
    return guess_template_name(tokenizer)


def choose_chat_template(
    chat_template: str | None, source_template: str | None, tokenizer
) -> tuple[str, str]:
    """(Jinja template, what it is) for the converted processor. None: the tinylmm template of the source's
    family (with the {% generation %} markers training needs); "source": the source's template verbatim; a
    name or Jinja: that."""
    if chat_template == "source":
        if not source_template:
            raise ConversionError("chat_template='source' asked for, but the source ships no chat template.")
        return source_template, "the source's own template"
    if chat_template is None:
        family = template_family(source_template, tokenizer)
        return CHAT_TEMPLATES[family], f"tinylmm's {family!r} template (the source's family)"
    return resolve_chat_template(chat_template, tokenizer), repr(chat_template)


def write_folder(model, processor, dst: str, card: dict) -> str:
    """Save a converted model with its processor, a generation config that stops at the chat template's end
    of turn, and a model card (`card`: what `conversion_card` gives)."""
    check_writable(dst)
    stop = set_generation_config(model, processor)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    write_model_card(dst, model, processor, **card)
    logger.info("wrote %s (generation stops at ids %s)", dst, stop)
    return dst


def conversion_card(source: str, kind: str, notes: list[str]) -> dict:
    """What a converted tinylmm folder's model card says of its origin: the source, and a line per fact."""
    return {"source": f"Converted from `{source}` (`{kind}`) with `tinylmm convert`.", "notes": list(notes)}


def export_card(title: str, source: str, notes: list[str], model_class: str) -> str:
    """The model card of a folder exported to a transformers format (loads without tinylmm)."""
    facts = "\n".join(f"- {line}" for line in notes)
    return (
        "---\nlibrary_name: transformers\npipeline_tag: image-text-to-text\ntags:\n- tinylmm\n---\n\n"
        f"# {title}\n\nExported from the tinylmm model `{source}` with `tinylmm convert --to`.\n\n{facts}\n\n"
        "## Use\n\n```python\n"
        f"from transformers import AutoProcessor, {model_class}\n"
        "from PIL import Image\n\n"
        f'model = {model_class}.from_pretrained("path/to/this/folder")\n'
        'processor = AutoProcessor.from_pretrained("path/to/this/folder")\n'
        'chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]\n'
        "prompt = processor.apply_chat_template(chat, add_generation_prompt=True)\n"
        'inputs = processor(images=Image.open("photo.jpg"), text=prompt, return_tensors="pt")\n'
        "reply = model.generate(**inputs, max_new_tokens=64)\n"
        'print(processor.decode(reply[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
        "```\n"
    )
