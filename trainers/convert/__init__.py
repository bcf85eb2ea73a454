"""Checkpoints in and out: `tinylmm convert SRC DST [--to tinylmm|llava|llava_onevision]`.

In: transformers' LLaVA (`llava`) and LLaVA-OneVision (`llava_onevision`) folders and TinyLLaVA_Factory
checkpoints (`tinyllava`: the Hub format and the Factory's own training folders, per-component pretrain
folders included) become complete tinylmm folders. Out: a tinylmm folder whose parts have a counterpart
becomes a folder that transformers' own LLaVA / LLaVA-OneVision classes load, which vLLM serves natively.

- `source.py`: where a checkpoint is (Hub id or folder), what kind it is, its weights.
- `llava.py`, `onevision.py`, `tinyllava.py`: one format each, both directions where there are two.
- `target.py`: writing a tinylmm folder (weights, config, processor, generation config, model card).
- `command.py`: `convert()` and the CLI subcommand.
"""

from .command import convert
from .source import ConversionError

__all__ = ["ConversionError", "convert"]
