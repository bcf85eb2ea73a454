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

import re
from collections.abc import Iterable

import torch
from torch import nn

_FROM_INDEX = re.compile(r"(\d+)\+")


def aliases(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The short names a pattern may start with: the model's parts, and `all`."""
    return {**model.parts, "all": ("",)}


def resolve_pattern(model: nn.Module, pattern: str) -> list[str]:
    """Dotted prefixes (from the model root) that a pattern stands for; `N+` expanded to indices."""
    head, _, rest = pattern.partition(".")
    short = aliases(model)
    if head in short:
        bases = list(short[head])
        if head == "vision_tower" and rest.split(".")[0] == "blocks":
            bases = [model.vision_blocks]
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
        f"{sorted(aliases(model))} and 'vision_tower.blocks'; top-level modules: {modules}."
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
        self.parts = model.parts
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

    def is_visual(self, name: str) -> bool:
        """Whether a parameter belongs to the vision tower or the connector."""
        return name_matches(canonical_name(name), self.parts["vision_tower"] + self.parts["connector"])

    def apply(self, model: nn.Module) -> list[str]:
        """Freeze everything the plan does not train; return the trainable parameter names."""
        names = []
        for name, param in model.named_parameters():
            param.requires_grad_(self.trains(name))
            if param.requires_grad:
                names.append(name)
        self.guard_frozen_tower(model)
        return names

    def apply_after_lora(self, model: nn.Module) -> None:
        """After PEFT wrapped the model (freezing all but the adapters and the modules it saves): parameters
        the plan trains that are not modules of their own (the AnyRes row separator) train in place."""
        for name, param in model.named_parameters():
            if "lora_" not in name and ".original_module." not in name and self.trains(name):
                param.requires_grad_(True)
        self.guard_frozen_tower(model)

    def guard_frozen_tower(self, model: nn.Module) -> None:
        """Run the vision tower under `torch.no_grad` whenever none of its parameters trains, so that nothing
        upstream (activation checkpointing, adapters' input-grad hooks) makes it build a graph that leads
        nowhere."""
        bare = model.get_base_model() if hasattr(model, "get_base_model") else model
        install_frozen_no_grad(bare.get_submodule(self.parts["vision_tower"][0]))

    def lora_config(self, model: nn.Module, recipe):
        """A LoraConfig on the linear layers of `recipe.lora_modules`; modules the recipe trains in full (the
        connector) are saved and trained whole. None when the recipe uses no LoRA."""
        if not recipe.use_lora:
            return None
        from peft import LoraConfig

        lora_prefixes = [p for pattern in recipe.lora_modules for p in resolve_pattern(model, pattern)]
        full_prefixes = [p for prefixes in self.train.values() for p in prefixes]
        head = self.parts["lm_head"]
        targets = [
            name
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear)
            and name_matches(name, lora_prefixes)
            and not name_matches(name, full_prefixes)
            # TRL's fused loss reads the head's weight directly: an adapter there would never train.
            and not name_matches(name, head)
        ]
        if not targets:
            raise ValueError(f"lora_modules {recipe.lora_modules} hold no linear layer to adapt.")
        modules = dict(model.named_modules())
        to_save = sorted(p for p in full_prefixes if p in modules)
        return LoraConfig(
            r=recipe.lora_r,
            lora_alpha=recipe.lora_alpha,
            lora_dropout=recipe.lora_dropout,
            target_modules=targets,
            modules_to_save=to_save or None,
            task_type="CAUSAL_LM",
        )


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
