#!/usr/bin/env bash
# LLaVA-OneVision stages 1, 1.5 and 2 on SigLIP + Qwen2 with AnyRes-Max-9 (pinpoints 384 x (1..6) squared).
set -euo pipefail
LAUNCH=${LAUNCH:-accelerate launch --config_file examples/accelerate/zero3.yaml}
PINPOINTS=$(python -c 'print([[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)])')

tinylmm build --vision_model google/siglip-so400m-patch14-384 --text_model Qwen/Qwen2-0.5B-Instruct \
  --connector_type mlp2x_gelu --image_aspect_ratio anyres_max_9 --image_grid_pinpoints "$PINPOINTS" \
  --chat_template chatml --output_dir checkpoints/onevision/build
for stage in stage1 stage1_5 stage2; do
  $LAUNCH -m trainers.cli train --config "onevision_${stage}" "$@"
done
