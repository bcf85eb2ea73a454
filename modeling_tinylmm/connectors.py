"""Connectors: vision features -> LLM embeddings, one small class per name.

Every connector gets `features` (V: the selected patch tokens, (B, N, C)), `hidden_states` (the patch
tokens of every vision hidden state it asked for, keyed by absolute index) and `grid` (the (rows,
cols) of V, or None when V is not a patch grid), and returns (B, N', D). A spatial connector keeps a
grid and says which (`output_grid`); a non-spatial one says how many tokens it makes (`num_tokens`).

Add one with `@register_connector("name")`; third-party packages add theirs through the entry-point
group `tinylmm.connectors`. A plugin connector's module travels with the checkpoints that use it (see
`plugin_source` and connector_plugins.py): it must import only installed libraries and tinylmm's
`modeling_tinylmm` (`from modeling_tinylmm import Connector, register_connector`).
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from importlib.metadata import entry_points
from typing import ClassVar

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN

CONNECTORS: dict[str, type[Connector]] = {}
_ENTRY_POINT_GROUP = "tinylmm.connectors"
_entry_points_loaded = False


def register_connector(name: str):
    """Class decorator adding a connector under `name`. A `{N}` in the name matches an integer that is
    passed to the constructor as `n` (as in `mlp{N}x_gelu`)."""

    def decorator(cls: type[Connector]) -> type[Connector]:
        if name in CONNECTORS:
            raise ValueError(
                f"a connector named {name!r} is already registered ({CONNECTORS[name].__qualname__})."
            )
        CONNECTORS[name] = cls
        cls.name = name
        return cls

    return decorator


def _load_entry_points() -> None:
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group=_ENTRY_POINT_GROUP):
            if ep.name not in CONNECTORS:
                ep.load()


def _load_carried() -> None:
    """Register the plugin connectors a checkpoint folder carries (none in the installed package). Imported
    here, not at the top, because a carried plugin imports this module."""
    from .connector_plugins import PLUGIN_CONNECTORS  # noqa: F401


def resolve_connector(name: str) -> tuple[type[Connector], dict]:
    """The class registered for `name` and the constructor arguments its name carries: built-in connectors,
    then those a checkpoint folder carries, then those of installed plugins (entry points)."""
    for load_more in (_load_carried, _load_entry_points, None):
        if name in CONNECTORS:
            return CONNECTORS[name], {}
        for pattern, cls in CONNECTORS.items():
            if "{N}" in pattern:
                match = re.fullmatch(re.escape(pattern).replace(r"\{N\}", r"(\d+)"), name)
                if match:
                    return cls, {"n": int(match.group(1))}
        if load_more is not None:
            load_more()
    raise ValueError(f"unknown connector {name!r}; registered connectors: {sorted(CONNECTORS)}.")


def is_plugin(cls: type) -> bool:
    """Whether a connector class comes from a plugin (not from this folder's code)."""
    here = __name__.rpartition(".")[0]
    return cls.__module__ not in (__name__, f"{here}.connector_plugins" if here else "connector_plugins")


def plugin_source(cls: type[Connector]) -> str:
    """The source of a plugin connector's module, made to run beside a checkpoint's code files: its imports
    of `modeling_tinylmm` (and its submodules) become relative. Raises when the module cannot travel alone."""
    module = sys.modules.get(cls.__module__)
    try:
        source = inspect.getsource(module)
    except (TypeError, OSError) as err:
        raise ValueError(
            f"connector {cls.name!r} is defined in {cls.__module__!r}, whose source cannot be read, so a checkpoint "
            "cannot carry it; define plugin connectors in an importable module file."
        ) from err
    lines = source.splitlines(keepends=True)
    for node in sorted(ast.walk(ast.parse(source)), key=lambda n: -getattr(n, "lineno", 0)):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise ValueError(
                f"connector {cls.name!r}: its module {cls.__module__!r} imports relatively (line {node.lineno}); "
                "a plugin connector's module must be self-contained to travel with checkpoints."
            )
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "modeling_tinylmm" for a in node.names
        ):
            raise ValueError(
                f"connector {cls.name!r}: write `from modeling_tinylmm import ...` in {cls.__module__!r} "
                f"(line {node.lineno}) rather than `import modeling_tinylmm`, so the import can be made relative."
            )
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "modeling_tinylmm":
            homes: dict[str, list[str]] = {}
            for alias in node.names:
                home = node.module.partition(".")[2] or _home_module(alias.name)
                homes.setdefault(home, []).append(
                    alias.name + (f" as {alias.asname}" if alias.asname else "")
                )
            indent = lines[node.lineno - 1][: node.col_offset]
            lines[node.lineno - 1 : node.end_lineno] = [
                f"{indent}from .{home} import {', '.join(names)}\n" for home, names in homes.items()
            ]
    return "".join(lines)


def _home_module(name: str) -> str:
    """The file of the package that defines a name `modeling_tinylmm` exports (TinyLMMConfig: its config)."""
    obj = getattr(sys.modules.get("modeling_tinylmm"), name, None)
    return getattr(obj, "__module__", __name__).rpartition(".")[2]


def connector_option(config, key: str, default):
    return (config.connector_config or {}).get(key, default)


# Count options of connector_config, with what each counts (for the error a non-positive value raises).
_COUNTS = {
    "num_queries": "the tokens each image becomes",
    "num_layers": "with none, the output would not depend on the image",
    "num_heads": "attention heads",
    "head_dim": "the width of each attention head",
    "hidden_size": "the Q-Former's width",
}


def check_counts(config, *keys: str) -> None:
    """Raise when one of these connector_config options is given and is not a positive integer (an option left
    out takes the connector's default)."""
    options = config.connector_config or {}
    for key in keys:
        value = options.get(key)
        if key in options and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(
                f"connector {config.connector_type!r}: connector_config[{key!r}] must be a positive integer "
                f"({_COUNTS[key]}); got {value!r}."
            )


class Connector(nn.Module):
    """Base class. Subclasses set `spatial` and override what differs; geometry is classmethods on the
    config alone, so that a processor can count tokens without building the module."""

    name: ClassVar[str] = ""
    spatial: ClassVar[bool] = True  # keeps the patch grid (needed by AnyRes and video pooling)
    needs_grid: ClassVar[bool] = False  # needs V to be a patch grid

    @classmethod
    def vision_layers(cls, config) -> list[int]:
        """Absolute vision hidden-state indices the connector reads (beyond V's own)."""
        return []

    @classmethod
    def output_grid(cls, config, grid: tuple[int, int]) -> tuple[int, int]:
        return grid

    @classmethod
    def num_tokens(cls, config, num_features: int, grid: tuple[int, int] | None) -> int:
        if cls.spatial and grid is not None:
            h, w = cls.output_grid(config, grid)
            return h * w
        return num_features

    @classmethod
    def check(cls, config) -> None:
        """Raise a ValueError when this connector cannot take the encoder's output."""
        if cls.needs_grid and config.feature_grid is None:
            raise ValueError(
                f"connector {config.connector_type!r} needs the vision features as a patch grid, but "
                f"vision_feature_select_strategy={config.vision_feature_select_strategy!r} keeps non-patch "
                f"tokens of the {config.vision_config.model_type} backbone; use 'default'."
            )

    def init_weights(self) -> None:
        """Initialise the connector's own parameters (learned queries and the like) when the model is built
        from a config; layers transformers knows (Linear, LayerNorm …) are initialised by the model. Use
        `transformers.initialization`'s functions, which leave loaded weights alone."""

    def forward(self, features: torch.Tensor, hidden_states: dict[int, torch.Tensor], grid) -> torch.Tensor:
        raise NotImplementedError


def mlp(in_dim: int, out_dim: int, depth: int, act: str) -> nn.Sequential:
    """Linear(in→out), then (depth−1)×[act, Linear(out→out)]."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [ACT2FN[act], nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


@register_connector("identity")
class IdentityConnector(Connector):
    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if config.feature_width != config.text_config.hidden_size:
            raise ValueError(
                f"connector 'identity' needs the vision width ({config.feature_width}) to equal the LLM width "
                f"({config.text_config.hidden_size}); use 'linear' or 'mlp2x_gelu'."
            )

    def __init__(self, config):
        super().__init__()

    def forward(self, features, hidden_states, grid):
        return features


@register_connector("linear")
class LinearConnector(Connector):
    def __init__(self, config):
        super().__init__()
        self.proj = nn.Linear(config.feature_width, config.text_config.hidden_size)

    def forward(self, features, hidden_states, grid):
        return self.proj(features)


@register_connector("mlp{N}x_gelu")
class MLPConnector(Connector):
    """`mlp2x_gelu` is the LLaVA-1.5 / TinyLLaVA default."""

    def __init__(self, config, n: int = 2):
        super().__init__()
        if n < 1:
            raise ValueError(f"connector mlp{n}x_gelu needs at least one layer.")
        self.mlp = mlp(config.feature_width, config.text_config.hidden_size, n, config.projector_hidden_act)

    def forward(self, features, hidden_states, grid):
        return self.mlp(features)


class _LatentAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x, latents):
        latents_n = self.norm_latents(latents)
        kv_in = torch.cat([self.norm_x(x), latents_n], dim=1)

        def split(t):  # (B, T, H*d) -> (B, H, T, d)
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        k, v = self.to_kv(kv_in).chunk(2, dim=-1)
        out = nn.functional.scaled_dot_product_attention(split(self.to_q(latents_n)), split(k), split(v))
        return self.to_out(out.transpose(1, 2).flatten(2))


@register_connector("resampler")
class ResamplerConnector(Connector):
    """Perceiver resampler: Q learned latents cross-attend to the image tokens (and to themselves)."""

    spatial = False

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        check_counts(config, "num_queries", "num_layers", "num_heads", "head_dim")

    @classmethod
    def num_tokens(cls, config, num_features, grid):
        return connector_option(config, "num_queries", 128)

    def __init__(self, config):
        super().__init__()
        dim = config.text_config.hidden_size
        heads, dim_head = connector_option(config, "num_heads", 8), connector_option(config, "head_dim", 64)
        self.proj = nn.Linear(config.feature_width, dim)
        self.latents = nn.Parameter(torch.randn(connector_option(config, "num_queries", 128), dim) * 0.02)
        self.layers = nn.ModuleList()
        for _ in range(connector_option(config, "num_layers", 3)):
            ff = nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, 4 * dim, bias=False),
                nn.GELU(),
                nn.Linear(4 * dim, dim, bias=False),
            )
            self.layers.append(nn.ModuleList([_LatentAttention(dim, heads, dim_head), ff]))
        self.norm = nn.LayerNorm(dim)

    def init_weights(self) -> None:
        init.normal_(self.latents, std=0.02)

    def forward(self, features, hidden_states, grid):
        x = self.proj(features)
        latents = self.latents.to(x.dtype).expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm(latents)


@register_connector("qformer")
class QFormerConnector(Connector):
    """BLIP-2 Q-Former (transformers' implementation) over Q learned queries, then Linear(→D)."""

    spatial = False

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        check_counts(config, "num_queries", "num_layers", "num_heads", "hidden_size")

    @classmethod
    def num_tokens(cls, config, num_features, grid):
        return connector_option(config, "num_queries", 32)

    def __init__(self, config):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        width = connector_option(config, "hidden_size", config.text_config.hidden_size)
        qconfig = Blip2QFormerConfig(
            hidden_size=width,
            num_hidden_layers=connector_option(config, "num_layers", 2),
            num_attention_heads=connector_option(config, "num_heads", max(1, width // 64)),
            intermediate_size=4 * width,
            encoder_hidden_size=config.feature_width,
            cross_attention_frequency=1,
        )
        self.queries = nn.Parameter(torch.randn(1, connector_option(config, "num_queries", 32), width) * 0.02)
        self.qformer = Blip2QFormerModel(qconfig)
        self.proj = nn.Linear(width, config.text_config.hidden_size)

    def init_weights(self) -> None:
        init.normal_(self.queries, std=0.02)

    def forward(self, features, hidden_states, grid):
        queries = self.queries.expand(features.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features).last_hidden_state
        return self.proj(out.to(self.proj.weight.dtype))


def _dense_layers(config) -> list[int]:
    """The two extra layers of STI / SCI; by default a third and two thirds of the way up (CLIP-L: 7, 15)."""
    n = config.vision_backbone.num_blocks
    layers = connector_option(config, "dense_layers", [n // 3 - 1, 2 * n // 3 - 1])
    return [config.vision_backbone.absolute(i) for i in layers]


class _DenseConnector(Connector):
    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if config.vision_backbone.kind != "vit":
            raise ValueError(
                f"connector {config.connector_type!r} fuses ViT layers of one width; got a CNN backbone."
            )


@register_connector("dense_sti")
class DenseSTIConnector(_DenseConnector):
    """Sparse token integration: V plus two earlier layers, 8× average-pooled over tokens, concatenated in
    the token dimension."""

    spatial = False
    stride = 8

    @classmethod
    def vision_layers(cls, config):
        return _dense_layers(config)

    @classmethod
    def num_tokens(cls, config, num_features, grid):
        return num_features + len(_dense_layers(config)) * (num_features // cls.stride)

    def __init__(self, config):
        super().__init__()
        self.layers = _dense_layers(config)
        self.mlp = mlp(config.feature_width, config.text_config.hidden_size, 2, config.projector_hidden_act)

    def forward(self, features, hidden_states, grid):
        pooled = [
            nn.functional.avg_pool1d(hidden_states[i].transpose(1, 2), self.stride, self.stride).transpose(
                1, 2
            )
            for i in self.layers
        ]
        return self.mlp(torch.cat([features, *pooled], dim=1))


@register_connector("dense_sci")
class DenseSCIConnector(_DenseConnector):
    """Sparse channel integration: V and two earlier layers concatenated in the channel dimension."""

    @classmethod
    def vision_layers(cls, config):
        return _dense_layers(config)

    def __init__(self, config):
        super().__init__()
        self.layers = _dense_layers(config)
        width = config.feature_width + len(self.layers) * config.vision_backbone.widths[0]
        self.mlp = mlp(width, config.text_config.hidden_size, 2, config.projector_hidden_act)

    def forward(self, features, hidden_states, grid):
        return self.mlp(torch.cat([features, *(hidden_states[i] for i in self.layers)], dim=-1))


@register_connector("dense_dci")
class DenseDCIConnector(_DenseConnector):
    """Dense channel integration: HS[0 … L−1] averaged within G equal groups, concatenated to V in channels."""

    @classmethod
    def vision_layers(cls, config):
        return list(range(config.vision_backbone.num_blocks))

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        groups, n = connector_option(config, "num_groups", 2), config.vision_backbone.num_blocks
        if n % groups:
            raise ValueError(
                f"dense_dci splits {n} hidden states into {groups} groups: not evenly divisible."
            )

    def __init__(self, config):
        super().__init__()
        self.groups = connector_option(config, "num_groups", 2)
        self.num_layers = config.vision_backbone.num_blocks
        width = config.feature_width + self.groups * config.vision_backbone.widths[0]
        self.mlp = mlp(width, config.text_config.hidden_size, 2, config.projector_hidden_act)

    def forward(self, features, hidden_states, grid):
        size = self.num_layers // self.groups
        groups = [
            torch.stack([hidden_states[i] for i in range(g * size, (g + 1) * size)]).mean(0)
            for g in range(self.groups)
        ]
        return self.mlp(torch.cat([features, *groups], dim=-1))


@register_connector("pixel_shuffle")
class PixelShuffleConnector(Connector):
    """Space-to-depth by a factor r (tokens ÷ r², width × r²), then Linear → D."""

    needs_grid = True

    @classmethod
    def factor(cls, config) -> int:
        return connector_option(config, "scale_factor", 2)

    @classmethod
    def output_grid(cls, config, grid):
        r = cls.factor(config)
        if grid[0] % r or grid[1] % r:
            raise ValueError(
                f"pixel_shuffle with scale_factor {r} needs a patch grid divisible by {r}; got {grid}."
            )
        return grid[0] // r, grid[1] // r

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        cls.output_grid(config, config.feature_grid)

    def __init__(self, config):
        super().__init__()
        self.r = self.factor(config)
        self.proj = nn.Linear(config.feature_width * self.r**2, config.text_config.hidden_size)

    def forward(self, features, hidden_states, grid):
        (b, _, c), (h, w), r = features.shape, grid, self.r
        x = features.reshape(b, h // r, r, w // r, r, c).permute(0, 1, 3, 2, 4, 5)
        return self.proj(x.reshape(b, (h // r) * (w // r), r * r * c))


@register_connector("convnext_stage")
class ConvNextStageConnector(Connector):
    """ConvLLaVA's stage 5: one more ConvNeXt stage (2× down, width 2C) on the encoder grid, then mlp2x_gelu."""

    needs_grid = True

    @classmethod
    def output_grid(cls, config, grid):
        return grid[0] // 2, grid[1] // 2

    def __init__(self, config):
        super().__init__()
        from transformers import ConvNextConfig
        from transformers.models.convnext.modeling_convnext import ConvNextStage

        width = config.feature_width
        block_config = config.vision_config if config.vision_backbone.kind == "cnn" else ConvNextConfig()
        depth = connector_option(config, "depth", 6)
        self.stage = ConvNextStage(block_config, width, 2 * width, kernel_size=2, stride=2, depth=depth)
        self.mlp = mlp(2 * width, config.text_config.hidden_size, 2, config.projector_hidden_act)

    def forward(self, features, hidden_states, grid):
        x = features.transpose(1, 2).unflatten(2, grid)  # (B, C, H, W)
        x = self.stage(x)
        return self.mlp(x.flatten(2).transpose(1, 2))
