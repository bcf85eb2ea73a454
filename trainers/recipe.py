"""What a training stage trains, and at which learning rate: module patterns resolved against a model.

A pattern names a part of `TinyLMMForConditionalGeneration` by a dotted path from one of the short names
below, or from the model root:

    vision_tower      the vision encoder (model.vision_tower)
    connector         the connector, with the learned AnyRes row separator (model.connector, model.image_newline)
    language_model    the LLM body and its head (model.language_model, lm_head)
    lm_head           the LM head alone
    all               every parameter

A last path component `N+` selects the entries N, N+1, … of a module list, e.g.
`vision_tower.encoder.layers.12+` (the blocks of a ViT from 12 on) or `vision_tower.encoder.stages.2+`
(ConvNeXt stages 3 and 4). `vision_tower.blocks` names the backbone's block list whatever its attribute
is called (`encoder.layers`, `encoder.layer`, `encoder.stages`). A pattern that selects no parameter is an
error, so a recipe cannot silently train less than it says.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

ALIASES = {
    "vision_tower": ("model.vision_tower",),
    "connector": ("model.connector", "model.image_newline"),
    "language_model": ("model.language_model", "lm_head"),
    "lm_head": ("lm_head",),
    "all": ("",),
}
_BLOCK_LISTS = ("encoder.layers", "encoder.layer", "encoder.stages")
_FROM_INDEX = re.compile(r"(\d+)\+")
STAGE_FILE = "tinylmm_stage.json"


def _block_list(model: nn.Module) -> str:
    tower = model.get_submodule("model.vision_tower")
    for name in _BLOCK_LISTS:
        try:
            if isinstance(tower.get_submodule(name), nn.ModuleList):
                return f"model.vision_tower.{name}"
        except AttributeError:
            continue
    raise ValueError(f"cannot find the block list of the {type(tower).__name__} vision tower.")


def resolve_pattern(model: nn.Module, pattern: str) -> list[str]:
    """Dotted prefixes (from the model root) that a pattern stands for; `N+` expanded to indices."""
    head, _, rest = pattern.partition(".")
    if head in ALIASES:
        bases = list(ALIASES[head])
        if head == "vision_tower" and rest.split(".")[0] == "blocks":
            bases = [_block_list(model)]
            rest = rest.partition(".")[2]
    else:
        bases, rest = [""], pattern
    out = []
    for base in bases:
        path = ".".join(p for p in (base, rest) if p)
        parent, _, last = path.rpartition(".")
        match = _FROM_INDEX.fullmatch(last)
        if match is None:
            out.append(path)
            continue
        try:
            blocks = model.get_submodule(parent)
        except AttributeError:
            raise ValueError(_missing(model, pattern)) from None
        start = int(match.group(1))
        if not isinstance(blocks, nn.ModuleList) or start >= len(blocks):
            size = len(blocks) if isinstance(blocks, nn.ModuleList) else 0
            raise ValueError(
                f"recipe pattern {pattern!r} selects nothing: {parent} holds {size} entries "
                f"(indices 0-{size - 1}), none from {start} on. The vision tower keeps only the blocks up to the "
                "last layer the model reads."
            )
        out += [f"{parent}.{i}" for i in range(start, len(blocks))]
    return out


def _missing(model: nn.Module, pattern: str) -> str:
    modules = sorted(
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        if name.count(".") < 1
        for child, _ in module.named_children()
    )
    return (
        f"recipe names module {pattern!r}, which does not exist in this {type(model).__name__}. Short names: "
        f"{sorted(ALIASES)} and 'vision_tower.blocks'; top-level modules: {modules}."
    )


def canonical_name(name: str) -> str:
    """A parameter name as on the bare model, whatever PEFT wrapping it went through."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".modules_to_save.default", "").replace(".original_module", "")


def name_matches(name: str, prefixes: Iterable[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def select_parameters(model: nn.Module, pattern: str) -> list[str]:
    """Names of the parameters a pattern selects; a clear error when it selects none."""
    prefixes = resolve_pattern(model, pattern)
    names = [name for name, _ in model.named_parameters() if name_matches(name, prefixes)]
    if not names:
        raise ValueError(_missing(model, pattern))
    return names


class ModulePlan:
    """A recipe's `train_modules` and `module_lrs`, resolved once against the bare model.

    Lookups take parameter names of the bare model or of a PEFT wrapping of it (LoRA weights belong to the
    module they adapt, so `language_model` covers the LLM's LoRA weights).
    """

    def __init__(
        self, model: nn.Module, train_modules: Iterable[str], module_lrs: dict[str, float] | None = None
    ):
        self.train = {p: resolve_pattern(model, p) for p in train_modules}
        for pattern in self.train:
            select_parameters(model, pattern)
        trainable = {n for n, _ in model.named_parameters() if self.trains(n)}
        self.lrs = []
        for pattern, lr in (module_lrs or {}).items():
            if not trainable & set(select_parameters(model, pattern)):
                raise ValueError(
                    f"module_lrs gives {pattern!r} a learning rate, but the recipe does not train it "
                    "(add it to train_modules)."
                )
            self.lrs.append((len(pattern), resolve_pattern(model, pattern), float(lr)))
        self.lrs.sort(key=lambda item: -item[0])  # most specific pattern first

    def trains(self, name: str) -> bool:
        return any(name_matches(canonical_name(name), prefixes) for prefixes in self.train.values())

    def lr(self, name: str, default: float) -> float:
        name = canonical_name(name)
        return next((lr for _, prefixes, lr in self.lrs if name_matches(name, prefixes)), default)

    def apply(self, model: nn.Module) -> list[str]:
        """Freeze everything the plan does not train; return the trainable parameter names.

        A fully frozen vision tower is also run under `torch.no_grad`, so that nothing upstream (gradient
        checkpointing, adapters' input-grad hooks) makes it build an autograd graph that leads nowhere.
        """
        names = []
        for name, param in model.named_parameters():
            param.requires_grad_(self.trains(name))
            if param.requires_grad:
                names.append(name)
        install_frozen_no_grad(model.get_submodule("model.vision_tower"))
        return names


def _enter_no_grad(module, args):
    if not any(p.requires_grad for p in module.parameters()):
        module._grad_mode = torch.is_grad_enabled()
        torch.set_grad_enabled(False)


def _exit_no_grad(module, args, output):
    mode = module.__dict__.pop("_grad_mode", None)
    if mode is not None:
        torch.set_grad_enabled(mode)


def install_frozen_no_grad(module: nn.Module) -> None:
    """Run `module` under no_grad whenever none of its parameters trains (checked at each call)."""
    if getattr(module, "_tinylmm_no_grad_hooks", None) is None:
        module._tinylmm_no_grad_hooks = (
            module.register_forward_pre_hook(_enter_no_grad),
            module.register_forward_hook(_exit_no_grad, always_call=True),
        )


# Stage records: each trained folder says which recipe stage made it, so the next stage can check it starts
# from the checkpoint it expects.


def write_stage(folder: str | os.PathLike, recipe: dict) -> None:
    Path(folder, STAGE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")


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
