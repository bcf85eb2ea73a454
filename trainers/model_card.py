"""The model card (README.md) of every saved tinylmm folder: build, each stage's final folder and its
checkpoints, conversions, merges.

It says what the model is made of (vision encoder, connector, LLM, their source checkpoints and parameter
counts, the chat template), how it was trained (the stages from the stage records, with their data and
steps), how it scored when it was evaluated (`tinylmm eval` records results in the folder), and how to load
and prompt it with an image. `write_model_card(folder, model, processor, source=…)` is the one entry point;
`model_parts` is also what `tinylmm train`'s summary and `tinylmm chat`'s model panel show.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from processors.chat_templates import CHAT_TEMPLATES, END_OF_TURN

from .stages import lineage

CARD_FILE = "README.md"
EVALUATIONS_FILE = "tinylmm_evaluations.json"
# A Hub model id ("org/name"); anything else named as a source is a local folder.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Prefix PEFT puts before every parameter name of a wrapped model.
_PEFT_PREFIX = "base_model.model."
_LABELS = {"vision_tower": "vision encoder", "connector": "connector", "language_model": "LLM"}


# -- what the model is made of ----------------------------------------------------------------------------


@dataclass
class Part:
    """One part of a model: what it is and how many parameters it has (and how many train)."""

    key: str  # vision_tower / connector / language_model
    label: str  # vision encoder / connector / LLM
    kind: str  # the backbone's model_type, or the connector's registered name
    detail: str
    parameters: int
    trainable: int


def chat_template_name(template: str | None) -> str:
    """The registered name of a chat template given by name or as Jinja (`chatml`, `vicuna` …), "custom"
    for other Jinja, "none"."""
    if not template:
        return "none"
    if template in CHAT_TEMPLATES:
        return template
    return next((name for name, jinja in CHAT_TEMPLATES.items() if jinja == template), "custom")


def _part_key(name: str, parts: dict[str, tuple[str, ...]]) -> str:
    name = name.removeprefix(_PEFT_PREFIX)
    for key in _LABELS:
        if any(name == p or name.startswith(p + ".") for p in parts[key]):
            return key
    return "other"


def model_parts(model) -> list[Part]:
    """The vision encoder, the connector and the LLM (its head included) of a tinylmm model, PEFT-wrapped or
    not, with parameter counts; tied weights are counted once."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    counts = {key: [0, 0] for key in (*_LABELS, "other")}
    for name, param in model.named_parameters():
        count = counts[_part_key(name, base.parts)]
        count[0] += param.numel()
        count[1] += param.numel() if param.requires_grad else 0
    vision, text = config.vision_config, config.text_config
    layers = config.vision_feature_layer
    blocks = getattr(vision, "num_hidden_layers", None) or len(getattr(vision, "depths", []) or []) or "?"
    size = getattr(vision, "image_size", None)
    patch = getattr(vision, "patch_size", None)
    vision_detail = f"features from hidden state {layers} of {blocks} blocks"
    if size:
        vision_detail += f"; {size} px images" + (f", {patch} px patches" if patch else "")
    connector_detail = f"{config.image_seq_length} tokens per image" if _has_seq_length(config) else ""
    if config.connector_config:
        connector_detail = "; ".join(
            x for x in (connector_detail, json.dumps(config.connector_config, sort_keys=True)) if x
        )
    text_layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", "?")
    text_hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", "?")
    details = {
        "vision_tower": (vision.model_type, vision_detail),
        "connector": (config.connector_type, connector_detail),
        "language_model": (
            text.model_type,
            f"{text_layers} layers, hidden size {text_hidden}, vocabulary {text.vocab_size}",
        ),
    }
    parts = [Part(key, _LABELS[key], *details[key], counts[key][0], counts[key][1]) for key in _LABELS]
    if counts["other"][0]:
        parts.append(Part("other", "other", "", "", *counts["other"]))
    return parts


def _has_seq_length(config) -> bool:
    try:
        return bool(config.image_seq_length)
    except (AttributeError, ValueError, TypeError):  # AnyRes layouts vary per image
        return False


def human_count(n: int) -> str:
    """12_345_678 -> "12.35 M"."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


# -- what the folder records ------------------------------------------------------------------------------


def read_evaluations(folder: str | os.PathLike) -> list[dict]:
    path = Path(folder, EVALUATIONS_FILE)
    return json.loads(path.read_text()) if path.is_file() else []


def record_evaluation(folder: str | os.PathLike, result: dict, model=None, processor=None) -> None:
    """Add an evaluation's overall scores to a folder's records (a re-run of the same task on the same data
    replaces the earlier entry) and, given the model, rewrite its model card to show them."""
    entry = {
        key: result.get(key)
        for key in ("task", "data", "overall", "prompt", "blank_images")
        if result.get(key) is not None
    }
    kept = [
        e
        for e in read_evaluations(folder)
        if (e.get("task"), e.get("data"), e.get("blank_images"))
        != (entry.get("task"), entry.get("data"), entry.get("blank_images"))
    ]
    Path(folder, EVALUATIONS_FILE).write_text(json.dumps([*kept, entry], indent=2) + "\n")
    if model is not None:
        write_model_card(folder, model, processor)


# -- the card ---------------------------------------------------------------------------------------------


def _code(value) -> str:
    return f"`{value}`" if value not in (None, "") else "–"


def _build_sources(stages: list[dict]) -> dict[str, str]:
    build = next((s for s in stages if s.get("stage_id") == "build"), {})
    sources = {}
    if build.get("vision_model"):
        sources["vision_tower"] = str(build["vision_model"])
    if build.get("text_model"):
        sources["language_model"] = str(build["text_model"])
    if "demo" in build:
        sources["vision_tower"] = sources["language_model"] = "random initialisation (`tinylmm demo`)"
    return sources


def _stage_rows(stages: list[dict]) -> list[str]:
    rows = [
        "| # | stage | started from | data | steps | trained | learning rate |",
        "|---:|---|---|---|---:|---|---|",
    ]
    for i, s in enumerate(stages):
        if s.get("stage_id") == "build":
            what = "composed by `tinylmm demo`" if "demo" in s else "composed by `tinylmm build`"
            rows.append(f"| {i} | build | {what} | – | – | – | – |")
            continue
        if s.get("stage_id") == "convert" or s.get("source"):
            rows.append(
                f"| {i} | {s.get('stage_id', 'convert')} | {_code(s.get('source'))} | – | – | – | – |"
            )
            continue
        data = s.get("data") or {}
        described = _code(data.get("data_path"))
        if data.get("image_folder"):
            described += f" (images in {_code(data['image_folder'])})"
        if data.get("samples") is not None:
            described += f", {data['samples']:,} samples"
        if data.get("chat_template"):
            described += f", template {_code(data['chat_template'])}"
        steps = s.get("steps")
        steps = "–" if steps is None else f"{steps:,}"
        if s.get("epochs") is not None:
            steps += f" ({s['epochs']:.2g} epochs)"
        if s.get("batch_size"):
            steps += f", {s['batch_size']} per step"
        if s.get("num_tokens"):
            steps += f", {s['num_tokens']:,} tokens"
        trained = ", ".join(s.get("train_modules") or ["all"])
        if s.get("use_lora"):
            trained = f"LoRA ({', '.join(s.get('lora_modules') or ['language_model'])}); {trained}"
        rates = [f"{s['learning_rate']:g}"] if s.get("learning_rate") is not None else []
        rates += [f"{k} {v:g}" for k, v in (s.get("module_lrs") or {}).items()]
        rows.append(
            f"| {i} | {s.get('stage_id') or 'stage'} | {_code(s.get('start'))} | {described} | {steps} | "
            f"{trained} | {', '.join(rates) or '–'} |"
        )
    return rows


def _evaluation_rows(evaluations: list[dict]) -> list[str]:
    rows = ["| task | data | n | scores | prompt suffix |", "|---|---|---:|---|---|"]
    for e in evaluations:
        overall = dict(e.get("overall") or {})
        n = overall.pop("n", "")
        scores = ", ".join(
            f"{k} {v}" if k in ("empty", "unparsed") else f"{k} {100 * v:.1f}"
            for k, v in overall.items()
            if isinstance(v, (int, float))
        )
        task = e.get("task", "?") + (" (blank images)" if e.get("blank_images") else "")
        suffix = (e.get("prompt") or {}).get("suffix")
        rows.append(
            f"| {task} | {_code(e.get('data'))} | {n} | {scores} | {_code(repr(suffix) if suffix is not None else None)} |"
        )
    return rows


def _lora_base(model) -> str | None:
    """The base model a PEFT-wrapped model's adapters were trained on, None for a plain model."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    return next(iter(configs.values())).base_model_name_or_path or "(not recorded)"


def _usage(where: str, lora_base: str | None) -> str:
    lines = [
        "```python",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{where}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{where}", trust_remote_code=True)',
        "messages = [",
        '    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}',
        "]",
        "inputs = processor.apply_chat_template(",
        "    messages,",
        "    add_generation_prompt=True,",
        "    tokenize=True,",
        "    return_dict=True,",
        '    images=[Image.open("photo.jpg")],',
        '    return_tensors="pt",',
        ")",
        "output = model.generate(**inputs, max_new_tokens=64)",
        'print(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
        "```",
    ]
    text = "\n".join(lines)
    if lora_base is not None:
        text = (
            f"This folder holds LoRA adapters on `{lora_base}` (recorded in `adapter_config.json`); "
            "`from_pretrained` loads that base model and applies them (needs `peft`).\n\n" + text
        )
    return (
        f"{text}\n\nThe folder ships the model's and the processor's code, so `trust_remote_code=True` loads it "
        "without tinylmm installed. With tinylmm installed, talk to it in the browser or the terminal:\n\n"
        f"```bash\ntinylmm chat --model {where}\ntinylmm chat --model {where} --cli\n```\n"
    )


def _front_matter(sources: dict[str, str], stages: list[dict]) -> str:
    from huggingface_hub import ModelCardData

    hub = sorted({s for s in sources.values() if _HUB_ID.fullmatch(s) and not os.path.isdir(s)})
    datasets = sorted(
        {
            d
            for s in stages
            if (d := (s.get("data") or {}).get("data_path"))
            and _HUB_ID.fullmatch(d)
            and not os.path.exists(d)
        }
    )
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=hub or None,
        datasets=datasets or None,
        tags=["tinylmm", "vision-language", "image-text-to-text"],
    )
    return f"---\n{data.to_yaml()}\n---\n"


def model_card(
    model,
    processor=None,
    *,
    folder: str | os.PathLike | None = None,
    source: str | None = None,
    notes: list[str] | tuple[str, ...] = (),
    stages: list[dict] | None = None,
    evaluations: list[dict] | None = None,
    location: str | None = None,
) -> str:
    """The model card's text. `source`: one sentence on where the weights came from when the stage records
    do not say (a conversion: "Converted from `llava-hf/llava-1.5-7b-hf` (`llava`) with `tinylmm convert`.");
    `notes`: facts worth a line each. `stages` / `evaluations` default to what `folder` records;
    `location`: what the usage example loads (a Hub id, or where the folder will be; default `folder`)."""
    stages = lineage(folder) if stages is None and folder is not None else (stages or [])
    if evaluations is None:
        evaluations = read_evaluations(folder) if folder is not None else []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    parts = model_parts(model)
    sources = _build_sources(stages)
    total = sum(p.parameters for p in parts)
    where = location or (os.fspath(folder) if folder is not None else "path/to/this/folder")
    name = Path(where).name or "tinylmm model"
    template = getattr(processor, "chat_template", None) if processor is not None else None
    template_name = chat_template_name(template)
    ends = END_OF_TURN.get(template_name) or (
        getattr(getattr(processor, "tokenizer", None), "eos_token", None) if processor is not None else None
    )
    vision, connector, llm = parts[0], parts[1], parts[2]
    lines = [
        _front_matter(sources, stages),
        f"# {name}",
        "",
        f"A tinylmm vision-language model: a `{vision.kind}` vision "
        f"encoder, a `{connector.kind}` connector and a `{llm.kind}` language model, {human_count(total)} "
        "parameters in all.",
    ]
    if source:
        lines += ["", source]
    lines += [
        "",
        "## Model",
        "",
        "| part | what | from | parameters |",
        "|---|---|---|---:|",
    ]
    trained = [s for s in stages if s.get("stage_id") not in ("build", None) or s.get("steps")]
    connector_origin = "trained by the stages below" if trained else ("new, random" if stages else "–")
    for p in parts:
        origin = sources.get(p.key) or (connector_origin if p.key == "connector" else "–")
        origin = origin if " " in origin else _code(origin)
        what = f"`{p.kind}`" + (f": {p.detail}" if p.detail else "")
        lines.append(f"| {p.label} | {what} | {origin} | {human_count(p.parameters)} |")
    lines += [
        "",
        f"Chat template: `{template_name}`" + (f" (a reply ends with `{ends}`)" if ends else "") + ". "
        f"Images: an `<image>` marker in the text, layout `{config.image_aspect_ratio}`; image token id "
        f"{config.image_token_id}.",
    ]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    if stages:
        lines += ["", "## Training", "", *_stage_rows(stages)]
    lines += ["", "## Evaluation", ""]
    if evaluations:
        lines += [
            "Scores in %, overall, greedy answers (`tinylmm eval`).",
            "",
            *_evaluation_rows(evaluations),
        ]
    else:
        lines.append(
            "Not evaluated yet: `tinylmm eval --model <this folder> --task pope --data pope.jsonl` adds its "
            "scores here."
        )
    lines += ["", "## Use", "", _usage(where, _lora_base(model))]
    return "\n".join(lines)


def write_model_card(
    folder: str | os.PathLike,
    model,
    processor=None,
    *,
    source: str | None = None,
    notes: list[str] | tuple[str, ...] = (),
    stages: list[dict] | None = None,
    evaluations: list[dict] | None = None,
    location: str | None = None,
) -> str:
    """Write `folder`/README.md for a saved tinylmm model (see `model_card`); returns its path."""
    path = os.path.join(os.fspath(folder), CARD_FILE)
    text = model_card(
        model,
        processor,
        folder=folder,
        source=source,
        notes=notes,
        stages=stages,
        evaluations=evaluations,
        location=location,
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
