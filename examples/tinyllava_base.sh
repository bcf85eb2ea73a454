#!/usr/bin/env bash
# TinyLLaVA `base` recipe end to end: build the starting checkpoint, align, then instruction-tune.
# Needs the LLaVA-Pretrain and LLaVA-mix-665k data under data/ (paths in the recipe files) and, for more than
# one GPU, an accelerate config: LAUNCH="accelerate launch --config_file examples/accelerate/zero2.yaml".
set -euo pipefail
VISION=${VISION:-google/siglip-so400m-patch14-384}
LLM=${LLM:-microsoft/phi-2}
TEMPLATE=${TEMPLATE:-vicuna}
LAUNCH=${LAUNCH:-python}

tinylmm build --vision_model "$VISION" --text_model "$LLM" --connector_type mlp2x_gelu \
  --chat_template "$TEMPLATE" --output_dir checkpoints/base/build
$LAUNCH -m trainers.cli train --config base_align "$@"
$LAUNCH -m trainers.cli train --config base_sft "$@"
