"""TinyLLaVA_Factory checkpoints (`model_type: tinyllava`) into tinylmm.

Two layouts hold the same model. The Hub format and the Factory's finetune-stage folders keep every weight in
the root's model file(s): `language_model.*` (a whole causal LM, head included), `vision_tower._vision_tower.*`
(the HF vision model) and `connector._connector.*` (an `nn.Sequential`: `mlp2x_gelu` is Linear at index 0 and
2). Pretrain-stage folders keep one `pytorch_model.bin` per part in `language_model/`, `vision_tower/` and
`connector/` (pickles, read with `weights_only=True`). The root's config.json says the rest:
`vision_feature_select_strategy: patch` drops token 0 (CLS for CLIP; a real patch for SigLIP, 729 → 728
tokens: tinylmm's `drop_first`), `cls_patch` keeps all; `image_aspect_ratio: pad` pads to a square in the mean
colour, `square` hands the image to the vision model's own processor (SigLIP resizes, CLIP resizes the
shorter side and centre-crops). The image token is −200 inside the Factory's code, not a vocabulary id: the
converted tokenizer gains `<image>` (in a spare embedding row where the LLM has one). Every Factory template
is Vicuna-style (`USER: … ASSISTANT: …`, the turn ending with the tokenizer's EOS).
"""

from __future__ import annotations

import os
import re

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from modeling_tinylmm import TinyLMMConfig, TinyLMMForConditionalGeneration
from modeling_tinylmm.vision_features import backbone
from processors import IMAGE_TOKEN

from .llava import image_options, processor_for, tokenizer_of
from .source import ConversionError, load_weights, read_config, split_prefix
from .target import build, conversion_card

_PARTS = ("language_model", "vision_tower", "connector")
_STRATEGIES = {"patch": "drop_first", "cls_patch": "full"}


def _weights(folder: str) -> tuple[dict, dict, dict, str]:
    """(LLM, vision, connector) weights under their own names, and which layout held them."""
    if os.path.isfile(os.path.join(folder, "adapter_config.json")):
        raise ConversionError(
            f"{folder} is a LoRA folder (adapter_config.json): merge the adapter into the model with "
            "TinyLLaVA_Factory's `load_pretrained_model` and save it, then convert the merged folder."
        )
    parts = [os.path.join(folder, p) for p in _PARTS]
    from .source import has_weights

    if has_weights(folder):
        weights = load_weights(folder)
        llm = split_prefix(weights, "language_model.")
        vision = split_prefix(weights, "vision_tower._vision_tower.")
        connector = split_prefix(weights, "connector._connector.")
        left = len(weights) - len(llm) - len(vision) - len(connector)
        if left:
            raise ConversionError(
                f"{folder}: {left} weights outside language_model / vision_tower / connector."
            )
        return llm, vision, connector, "one model file (Hub / finetune layout)"
    if all(os.path.isdir(p) and has_weights(p) for p in parts):
        llm, vision, connector = (load_weights(p) for p in parts)
        connector = {k.split("_connector.", 1)[1]: v for k, v in connector.items() if "_connector." in k}
        return llm, vision, connector, "per-part folders (pretrain-stage layout)"
    raise ConversionError(
        f"{folder} holds no TinyLLaVA weights: neither a model file at its root nor language_model/, "
        "vision_tower/ and connector/ folders with weights."
    )


def _renamed(weights: dict, target_keys: set, drop: str) -> dict:
    """Weights saved by an older transformers under a `drop` prefix (`vision_model.`) that today's class
    does not use: the prefix is removed where the target has no such key."""
    out = {}
    for k, v in weights.items():
        if k not in target_keys and k.startswith(drop) and k[len(drop) :] in target_keys:
            k = k[len(drop) :]
        out[k] = v
    return out


def _grow(weights: dict[str, torch.Tensor], names: list[str], rows: int) -> None:
    """Give the embedding / head matrices `rows` rows, new ones at the mean of the old (transformers'
    resizing)."""
    for name in names:
        if name in weights and weights[name].shape[0] < rows:
            w = weights[name]
            extra = w.float().mean(0, keepdim=True).expand(rows - w.shape[0], *w.shape[1:]).to(w.dtype)
            weights[name] = torch.cat([w, extra])


def to_tinylmm(folder: str, source: str, chat_template: str | None = None):
    """(model, processor, card) of a TinyLLaVA_Factory checkpoint folder."""
    tc = read_config(folder)
    text = AutoConfig.for_model(**tc["text_config"])
    vision = tc["vision_config"]
    vision = AutoConfig.for_model(
        **{k: v for k, v in vision.items() if not k.startswith("model_name_or_path")}
    )
    connector = tc.get("connector_type") or ""
    if not re.fullmatch(r"mlp\d+x_gelu", connector):
        raise ConversionError(
            f"{folder}: connector_type {connector!r} has no tinylmm counterpart that reads its weights "
            "(mlpNx_gelu does)."
        )
    strategy = tc.get("vision_feature_select_strategy", "patch")
    if strategy not in _STRATEGIES:
        raise ConversionError(
            f"{folder}: vision_feature_select_strategy {strategy!r} is not one TinyLLaVA knows."
        )
    strategy = _STRATEGIES[strategy]
    if strategy == "drop_first" and backbone(vision).num_prefix_tokens == 1:
        strategy = "default"  # token 0 is CLIP's CLS: the same selection, said the usual way
    llm, vision_weights, connector_weights, layout = _weights(folder)

    tokenizer, notes = tokenizer_of(folder)
    tokenizer.padding_side = tc.get("tokenizer_padding_side", tokenizer.padding_side)
    with init_empty_weights(include_buffers=False):
        causal = AutoModelForCausalLM.from_config(text)
        tower = AutoModel.from_config(vision)
    prefix = f"{causal.base_model_prefix}."
    body = split_prefix(llm, prefix)
    head, head_bias = llm.get("lm_head.weight"), llm.get("lm_head.bias")  # Phi's head has a bias
    embed = causal.get_input_embeddings()
    embed_name = next(n for n, m in causal.base_model.named_modules() if m is embed) + ".weight"

    vocab = tokenizer.get_vocab()
    rows = body[embed_name].shape[0]
    if IMAGE_TOKEN in vocab:
        image_token_id = vocab[IMAGE_TOKEN]
    else:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if image_token_id >= rows:
            notes.append(f"{IMAGE_TOKEN} added as token {image_token_id}: one more embedding row")
        else:
            notes.append(f"{IMAGE_TOKEN} added as token {image_token_id}, a spare embedding row")
    rows = max(rows, image_token_id + 1)
    text_dict = text.to_dict()
    text_dict["vocab_size"] = rows

    mode = tc.get("image_aspect_ratio", "square")
    options = _image_options(folder, vision, mode)
    config = TinyLMMConfig(
        vision_config=vision.to_dict(),
        text_config=text_dict,
        image_token_id=image_token_id,
        vision_feature_layer=tc.get("vision_feature_layer", -2),
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu",
        connector_type=connector,
        image_aspect_ratio=options.pop("image_aspect_ratio"),
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)) and head is None,
    )
    weights = {f"model.language_model.{k}": v for k, v in body.items()}
    if head is not None:
        weights["lm_head.weight"] = head
    if head_bias is not None:
        weights["lm_head.bias"] = head_bias
    _grow(weights, [f"model.language_model.{embed_name}", "lm_head.weight", "lm_head.bias"], rows)
    vision_weights = _renamed(vision_weights, set(tower.state_dict()), "vision_model.")
    weights.update({f"model.vision_tower.{k}": v for k, v in vision_weights.items()})
    weights.update({f"model.connector.mlp.{k}": v for k, v in connector_weights.items()})
    model, dropped = build(TinyLMMForConditionalGeneration, config, weights, folder, ("model.vision_tower.",))
    processor, which = processor_for(
        config, tokenizer, folder, chat_template or "vicuna", options, IMAGE_TOKEN
    )
    card = conversion_card(
        source,
        "tinyllava",
        [
            f"weights from {layout}",
            f"LLM {tc.get('llm_model_name_or_path') or text.model_type}, vision "
            f"{tc['vision_config'].get('model_name_or_path') or vision.model_type}, connector {connector}",
            f"vision_feature_select_strategy {tc.get('vision_feature_select_strategy', 'patch')!r} → "
            f"{config.vision_feature_select_strategy!r}; image_aspect_ratio {mode!r} → {config.image_aspect_ratio!r}",
            f"{len(dropped)} vision-tower weights the model never reads were left out",
            f"chat template: {which}",
            *notes,
        ],
    )
    return model, processor, card


def _image_options(folder: str, vision, mode: str) -> dict:
    """What TinyLLaVA does to an image: `pad` expands to a square in the mean colour before the vision
    model's processor; `square` leaves it to that processor. The processor is the folder's
    preprocessor_config.json where there is one, else the backbone's own defaults."""
    if mode not in ("pad", "square"):
        raise ConversionError(
            f"{folder}: image_aspect_ratio {mode!r} is not one TinyLLaVA knows (pad, square)."
        )
    from transformers import AutoImageProcessor, CLIPImageProcessor, SiglipImageProcessor

    side = vision.image_size
    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        ip = AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)
    elif vision.model_type == "siglip_vision_model":
        ip = SiglipImageProcessor(size={"height": side, "width": side})
    elif vision.model_type == "clip_vision_model":
        ip = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    else:
        raise ConversionError(
            f"{folder}: no preprocessor_config.json, and no default image processor known for "
            f"{vision.model_type!r}; add the vision model's preprocessor_config.json to the folder."
        )
    options = image_options(ip, side, folder)
    if mode == "pad":
        options["image_aspect_ratio"] = "pad"  # a square is neither cropped nor distorted by resizing
    return options
