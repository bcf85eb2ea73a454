"""Where a demo training step spends its time: the demo's SFT stage under cProfile, summed by part.

Runs the demo's world (fewer scenes), builds its starting checkpoint, trains `--steps` SFT steps with the
demo's settings and prints the time in the data path (collating: chat templates, images), the forward and
loss (the LLM's share, the vision tower + connector's share), the backward and the optimizer step, and the
one-off tokenisation of the chats before training. `--no_packing` pads each batch instead of packing it.

    python benchmarks/profile_demo.py --steps 60
    python benchmarks/profile_demo.py --steps 60 --no_packing
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (label, file fragment, function): the profile's cumulative time of that function, largest entry.
PARTS = (
    ("data: next batch (collate, images)", "accelerate/data_loader.py", "__iter__"),
    ("forward + loss", "trainers/trainer.py", "compute_loss"),
    ("  of which the LLM's forward", "modeling_llama.py", "forward"),
    ("  of which vision tower + connector", "modeling_tinylmm.py", "get_image_features"),
    ("backward", "accelerate/accelerator.py", "backward"),
    ("optimizer step", "accelerate/optimizer.py", "step"),
    ("before training: chats tokenised once", "trainers/collator.py", "encode_dataset"),
)


def cumulative(stats: pstats.Stats, fragment: str, function: str) -> float:
    times = [
        entry[3]
        for (path, _, name), entry in stats.stats.items()  # type: ignore[attr-defined]
        if fragment in path and name == function
    ]
    return max(times, default=0.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--scenes", type=int, default=2000, help="training scenes in the world")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no_packing", action="store_true")
    opts = parser.parse_args(argv)

    import torch

    from trainers.demo import pipeline

    torch.set_num_threads(opts.threads)
    settings = replace(
        pipeline.DemoSettings(),
        train_scenes=opts.scenes,
        sft_steps=opts.steps,
        logging_steps=max(opts.steps // 4, 1),
    )
    if opts.no_packing:
        settings = replace(settings, packing=False)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        pipeline.write_world(out / "data", settings)
        start = pipeline.build_start(out / "build", settings)
        profile = cProfile.Profile()
        began = time.perf_counter()
        profile.enable()
        pipeline.train_stage(
            "sft",
            start,
            out / "data" / "sft.json",
            out / "sft",
            "chatml",
            opts.steps,
            settings.sft_lr,
            settings,
            "build",
        )
        profile.disable()
        wall = time.perf_counter() - began
    stats = pstats.Stats(profile)
    loop = cumulative(stats, "transformers/trainer.py", "_inner_training_loop")
    packing = getattr(settings, "packing", False)
    print(f"\n{opts.steps} SFT steps of the demo, packing {packing}, {opts.threads} thread(s)")
    print(
        f"{'training loop':42}{loop:8.2f} s  100.0 %   ({1000 * loop / opts.steps:.0f} ms/step; stage {wall:.1f} s)"
    )
    for label, fragment, function in PARTS:
        seconds = cumulative(stats, fragment, function)
        print(f"{label:42}{seconds:8.2f} s  {100 * seconds / loop:5.1f} %")


if __name__ == "__main__":
    main()
