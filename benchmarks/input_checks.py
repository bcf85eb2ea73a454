"""What the model's input checks cost: host reads (device -> host copies, each a sync on an accelerator) per
forward, and the time of the checks beside a whole forward.

    python benchmarks/input_checks.py                    # CPU, tiny shapes
    python benchmarks/input_checks.py --device cuda --images 16 --side 384 --patch 14

Host reads are counted by wrapping the tensor methods that copy a value to the host (`item`, `tolist`,
`__int__`, `__float__`, `__bool__`, `__index__`); on CUDA, `torch.cuda.set_sync_debug_mode` counts the syncs too.
The checks (`_check_inputs`: placeholder count, ids in the vocabulary, finite and normalised pixels) share the
one host read the placeholder count always needed; `_check_positions` reads nothing within the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import torch
from transformers import AutoConfig

from modeling_tinylmm import TinyLMMConfig, TinyLMMForConditionalGeneration

HOST_READS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")


@contextlib.contextmanager
def counting_host_reads(device: str):
    counts = {"reads": 0, "syncs": 0}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name):
        def read(self, *args, **kwargs):
            counts["reads"] += 1
            return originals[name](self, *args, **kwargs)

        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, wrap(name))
    caught = contextlib.nullcontext()
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        caught = warnings.catch_warnings(record=True)
    try:
        with caught as records:
            yield counts
        if records is not None:
            counts["syncs"] = sum("synchroniz" in str(r.message) for r in records)
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)


def build(args) -> TinyLMMForConditionalGeneration:
    vision = AutoConfig.for_model(
        "siglip_vision_model",
        hidden_size=args.width,
        intermediate_size=4 * args.width,
        num_hidden_layers=3,
        num_attention_heads=max(1, args.width // 64),
        image_size=args.side,
        patch_size=args.patch,
    )
    text = AutoConfig.for_model(
        "qwen2",
        vocab_size=1000,
        hidden_size=args.width,
        intermediate_size=4 * args.width,
        num_hidden_layers=2,
        num_attention_heads=max(1, args.width // 64),
        num_key_value_heads=max(1, args.width // 64),
        max_position_embeddings=32768,
    )
    config = TinyLMMConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=999)
    torch.manual_seed(0)
    return TinyLMMForConditionalGeneration(config).to(args.device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = build(args)
    config, device = model.config, args.device
    per_image = config.image_seq_length
    row = [1, 5, 6] + ([999] * per_image + [7]) * args.images + [8, 9]
    ids = torch.tensor([row], device=device)
    px = torch.randn(args.images, 3, args.side, args.side, device=device)
    text = torch.tensor([[1, 5, 6, 7, 8, 9]], device=device)

    cases = {
        "prefill with images": lambda: model(input_ids=ids, pixel_values=px),
        "text-only prefill": lambda: model(input_ids=text),
        "training forward (labels)": lambda: model(input_ids=ids, pixel_values=px, labels=ids),
    }
    with torch.no_grad():
        for name, run in cases.items():
            run()
            with counting_host_reads(device) as counts:
                run()
            print(
                f"{name:28s} host reads {counts['reads']}"
                + (f", syncs {counts['syncs']}" if device == "cuda" else "")
            )
        out = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=2, do_sample=False)
        with counting_host_reads(device) as two:
            model.generate(input_ids=ids, pixel_values=px, max_new_tokens=2, do_sample=False)
        with counting_host_reads(device) as ten:
            model.generate(input_ids=ids, pixel_values=px, max_new_tokens=10, do_sample=False)
        print(
            f"{'generate: per decode step':28s} host reads {(ten['reads'] - two['reads']) / 8:.1f} (all of generate's)"
        )
        del out

        def timed(fn) -> float:
            fn()
            best = float("inf")
            for _ in range(args.repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
            return best

        check = timed(lambda: model.model._check_inputs(ids, px))
        forward = timed(lambda: model(input_ids=ids, pixel_values=px))
        print(
            f"_check_inputs {check * 1e3:.3f} ms of a {forward * 1e3:.3f} ms forward ({100 * check / forward:.1f} %), "
            f"{args.images} image(s) of {args.side} px, best of {args.repeats}"
        )


if __name__ == "__main__":
    main()
