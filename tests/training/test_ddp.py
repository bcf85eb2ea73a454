"""Two-process DDP on the CPU (gloo): a partly frozen vision tower read at layer -2, gradient checkpointing,
no find_unused_parameters, text-only batches in the mix; both processes must end with the same weights."""

import socket
import subprocess
import sys
import textwrap

import torch
from _processor_fixtures import make_processor
from _train_fixtures import chat_rows, write_images, write_json
from conftest import VISION, tiny_model

DRIVER = textwrap.dedent(
    """
    import os, sys
    import torch
    from transformers import TrainerCallback
    from trainers.train import parse, train

    class SaveWeights(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            weights = {n: p.detach().cpu() for n, p in model.named_parameters()}
            info = {"world_size": args.world_size, "find_unused": args.ddp_find_unused_parameters}
            torch.save({"weights": weights, **info}, f"{args.output_dir}/rank{os.environ['RANK']}.pt")

    train(*parse(sys.argv[1:]), callbacks=[SaveWeights()])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    VISION["clip4"] = {**VISION["clip"], "num_hidden_layers": 4}
    try:
        model = tiny_model("clip4", "llama", vision_feature_layer=-2)
    finally:
        del VISION["clip4"]
    assert len(model.model.vision_tower.encoder.layers) == 3  # block 4 is never read: dropped
    make_processor("chatml", config=model.config).save_pretrained(tmp_path / "start")
    model.save_pretrained(tmp_path / "start")
    names = write_images(tmp_path / "images", 8)
    text_only = {"conversations": [{"from": "human", "value": "how many ?"}, {"from": "gpt", "value": "two"}]}
    write_json(tmp_path / "data.json", chat_rows(names) + [text_only] * 4)
    (tmp_path / "recipe.yaml").write_text(
        textwrap.dedent(
            f"""
            model_name_or_path: {tmp_path / "start"}
            data_path: {tmp_path / "data.json"}
            image_folder: {tmp_path / "images"}
            output_dir: {tmp_path / "out"}
            train_modules: [connector, language_model, vision_tower.encoder.layers.1+]
            learning_rate: 1.0e-3
            per_device_train_batch_size: 2
            # Two epochs of three steps; modality grouping makes one step of each epoch text-only on both ranks.
            max_steps: 6
            group_by_modality_length: true
            activation_checkpointing: true
            bf16: false
            use_cpu: true
            report_to: none
            save_strategy: "no"
            disable_tqdm: true
            """
        )
    )
    (tmp_path / "driver.py").write_text(DRIVER)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(tmp_path / "driver.py"),
        "--config",
        str(tmp_path / "recipe.yaml"),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / "out" / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["find_unused"] is False
    start = dict(model.named_parameters())
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
    trained = {n for n, w in ranks[0]["weights"].items() if not torch.equal(w, start[n].detach())}
    assert "model.vision_tower.encoder.layers.1.mlp.fc1.weight" in trained
    assert not any(n.startswith("model.vision_tower.encoder.layers.0.") for n in trained)
    assert not any(n.startswith("model.vision_tower.embeddings.") for n in trained)
