"""Fine-tune a tinylmm checkpoint with plain TRL, no tinylmm trainer code: the model and its processor go to
trl.SFTTrainer as they are, and assistant_only_loss=True supervises the assistant turns only.

    python examples/stock_trl_sft.py --model checkpoints/base/align --data my_dataset --output_dir out

`--data` is any `datasets` source with `messages` (TRL style) and `images` columns.
"""

import argparse

from datasets import load_dataset
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import SFTConfig, SFTTrainer

import trainers  # noqa: F401  (registers tinylmm with the Auto classes; or pass trust_remote_code=True)

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--output_dir", required=True)
parser.add_argument("--max_steps", type=int, default=-1)
args = parser.parse_args()

model = AutoModelForImageTextToText.from_pretrained(args.model)
processor = AutoProcessor.from_pretrained(args.model)
for param in model.model.vision_tower.parameters():  # stock TRL trains everything it is given
    param.requires_grad_(False)
trainer = SFTTrainer(
    model=model,
    processing_class=processor,
    train_dataset=load_dataset(args.data, split="train"),
    args=SFTConfig(
        output_dir=args.output_dir, assistant_only_loss=True, max_steps=args.max_steps, max_length=None
    ),
)
trainer.train()
trainer.save_model()
