"""Where a checkpoint to convert is, what kind it is, and its weights."""

from __future__ import annotations

import json
import os

import torch

# config.json model types that `tinylmm convert` reads.
KINDS = ("tinylmm", "llava", "llava_onevision", "tinyllava")
_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the part and, where there is one, the fix."""


def locate(src: str | os.PathLike) -> str:
    """A local folder for `src`: the folder itself, or the Hub snapshot of a repo id (from the local cache when
    HF_HUB_OFFLINE=1)."""
    src = os.fspath(src)
    if os.path.isdir(src):
        return src
    if os.path.exists(src):
        raise ConversionError(f"{src} is a file; give the checkpoint's folder (the one holding config.json).")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(src)
    except Exception as err:  # not a repo id, offline, gated …: the hub's own message says which
        raise ConversionError(
            f"{src} is not a local folder and could not be fetched from the Hub: {err}"
        ) from err


def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"{folder} has no config.json: it is not a model checkpoint folder.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def kind_of(config: dict, folder: str) -> str:
    kind = config.get("model_type")
    if kind not in KINDS:
        raise ConversionError(
            f"{folder}: config.json has model_type {kind!r}; tinylmm convert reads {', '.join(KINDS)}."
        )
    return kind


def has_weights(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in _SAFETENSORS + _PICKLES)


def load_weights(folder: str) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's weights: safetensors (single or sharded) or, failing those, PyTorch pickles
    read with `weights_only=True` (tensors only, no code run)."""
    for name in _SAFETENSORS + _PICKLES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".index.json"):
            with open(path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            files = [os.path.join(folder, shard) for shard in shards]
        else:
            files = [path]
        weights: dict[str, torch.Tensor] = {}
        for file in files:
            weights.update(_read(file))
        return weights
    raise ConversionError(f"{folder} holds no weights ({', '.join(_SAFETENSORS + _PICKLES)} looked for).")


def _read(file: str) -> dict[str, torch.Tensor]:
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(file)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickles holding anything but tensors are refused by weights_only
        raise ConversionError(f"{file} could not be read as tensors only (weights_only=True): {err}") from err


def split_prefix(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix` (a dotted name ending in '.'), with it removed."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
