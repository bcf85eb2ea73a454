"""Two processes end with the weights of one process that sees the same global batches (packing and the
supervised-positions loss included). Which case runs where:

- DDP: on the CPU (gloo), through trainers.train under torch.distributed.run.
- FSDP on the CPU: torch's FSDP2 (`fully_shard`) directly, two processes with gloo, with the settings of
  examples/accelerate/fsdp.yaml applied in accelerate's order: the wrap units it names (TRANSFORMER_BASED_WRAP:
  the model's `_no_split_modules`, looked up in the model as accelerate looks them up), activation checkpointing
  on them, fsdp_reshard_after_forward, then the input embeddings, the head and the root. The training steps
  are the trainer's (the collator with packing, the supervised-positions loss weighted by the global count of
  supervised tokens), without the Trainer itself. Not exercised there: fsdp_cpu_ram_efficient_loading (every
  process builds the same seeded model instead of rank 0 loading it and broadcasting it), bf16 mixed precision
  (fp32, as in the accelerate case) and the FULL_STATE_DICT save (the weights are gathered with full_tensor).
- FSDP through accelerate's own path (accelerate launch with fsdp.yaml, the Trainer): two CUDA devices.
  accelerate (1.15) shards only on accelerator devices: on the CPU its FSDP settings are ignored and the run
  is plain multi-process data parallelism (accelerate/state.py enables FSDP for MULTI_GPU, MULTI_XPU, ...,
  not MULTI_CPU). Without two CUDA devices this case is skipped (not passed)."""

import datetime
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from _processor_fixtures import make_processor
from _train_fixtures import chat_rows, model_and_processor, write_images, write_json
from accelerate.utils.dataclasses import get_module_class_from_name
from conftest import IMAGE_TOKEN, tiny_model
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, Shard

from trainers.collator import DROPPED_KEY, SKIPPED_KEY, TOKENS_KEY, TinyLMMCollator
from trainers.data import llava_row
from trainers.loss import add_supervised_loss
from trainers.plan import ModulePlan

FSDP_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "accelerate" / "fsdp.yaml"

DRIVER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from transformers import TrainerCallback
    from trainers.train import parse, train

    class SaveWeights(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            weights = {}
            for name, p in model.named_parameters():
                p = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2 shards are DTensors
                weights[name] = p.detach().float().cpu()
            if int(os.environ.get("RANK", 0)) == 0:
                torch.save(weights, f"{args.output_dir}/weights.pt")

    trainer = train(*parse(sys.argv[1:]), callbacks=[SaveWeights()])
    if trainer.is_world_process_zero():
        with open(f"{trainer.args.output_dir}/run.json", "w") as f:
            json.dump({"fsdp": trainer.is_fsdp_enabled, "world_size": trainer.args.world_size}, f)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recipe(tmp_path, name: str, batch: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            model_name_or_path: {tmp_path / "start"}
            data_path: {tmp_path / "data.json"}
            image_folder: {tmp_path / "images"}
            output_dir: {tmp_path / name}
            train_modules: [connector, language_model]
            optim: sgd
            learning_rate: 0.1
            per_device_train_batch_size: {batch}
            max_steps: 3
            packing: true
            max_length: 128
            gradient_checkpointing: false
            bf16: false
            use_cpu: {str(not torch.cuda.is_available()).lower()}
            report_to: none
            save_strategy: "no"
            disable_tqdm: true
            """
        )
    )
    return path


def _launch(tmp_path, kind: str) -> list[str]:
    port = str(_free_port())
    if kind == "ddp":
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
        launcher += ["--master_port", port]
    else:
        launcher = [
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(FSDP_CONFIG),
            "--num_processes",
            "2",
        ]
        launcher += ["--mixed_precision", "no", "--main_process_port", port]
    return [
        sys.executable,
        *launcher,
        str(tmp_path / "driver.py"),
        "--config",
        str(_recipe(tmp_path, kind, batch=2)),
    ]


@pytest.mark.parametrize(
    "kind",
    [
        "ddp",
        pytest.param(
            "fsdp",
            marks=pytest.mark.skipif(
                torch.cuda.device_count() < 2,
                reason="needs 2 CUDA devices: accelerate applies FSDP only on accelerators (on the CPU: plain DDP)",
            ),
        ),
    ],
)
def test_two_processes_end_with_the_weights_of_one(tmp_path, kind):
    model = tiny_model("clip", "llama")
    make_processor("chatml", config=model.config).save_pretrained(tmp_path / "start")
    model.save_pretrained(tmp_path / "start")
    write_json(tmp_path / "data.json", chat_rows(write_images(tmp_path / "images", 12), turns=2))
    (tmp_path / "driver.py").write_text(DRIVER)
    single = [
        sys.executable,
        str(tmp_path / "driver.py"),
        "--config",
        str(_recipe(tmp_path, "single", batch=4)),
    ]
    for command in (_launch(tmp_path, kind), single):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
    run = json.loads((tmp_path / kind / "run.json").read_text())
    assert run == {"fsdp": kind == "fsdp", "world_size": 2}
    sharded = torch.load(tmp_path / kind / "weights.pt")
    whole = torch.load(tmp_path / "single" / "weights.pt")
    assert sharded.keys() == whole.keys()
    start = dict(model.named_parameters())
    assert any(not torch.equal(whole[n], start[n].detach()) for n in whole)  # it trained
    for name, weight in whole.items():
        torch.testing.assert_close(sharded[name], weight, atol=1e-5, rtol=1e-4, msg=name)


# -- FSDP2 on the CPU: torch's fully_shard with the settings of examples/accelerate/fsdp.yaml ---------------

CHECKPOINT_PREFIX = "_checkpoint_wrapped_module."
TRAIN_MODULES = ["connector", "language_model", "vision_tower.encoder.layers.1+"]
STEPS, PER_RANK, WORLD = 3, 2, 2


def _fsdp_settings() -> dict:
    config = yaml.safe_load(FSDP_CONFIG.read_text())
    assert config["distributed_type"] == "FSDP" and str(config["fsdp_config"]["fsdp_version"]) == "2"
    return config["fsdp_config"]


def _wrap_class_names(model, settings: dict) -> set[str]:
    """The classes whose modules get an FSDP unit of their own, read as accelerate reads the configuration:
    those named by fsdp_transformer_layer_cls_to_wrap, else the model's `_no_split_modules`."""
    policy = settings.get("fsdp_auto_wrap_policy")
    assert policy == "TRANSFORMER_BASED_WRAP", f"fsdp_auto_wrap_policy {policy!r} is not applied by this test"
    names = settings.get("fsdp_transformer_layer_cls_to_wrap")
    return {n.strip() for n in names.split(",")} if names else set(model._no_split_modules or ())


def _wrap_policy(model, settings: dict):
    """Whether a module is a wrap unit; each class name is looked up in the model as accelerate looks it up
    (a name the model does not hold is an error there too)."""
    classes = []
    for name in sorted(_wrap_class_names(model, settings)):
        cls = get_module_class_from_name(model, name)
        assert cls is not None, f"wrap class {name} is not in the model: accelerate raises here"
        classes.append(cls)
    return lambda module: isinstance(module, tuple(classes))


def _apply_fsdp(model, settings: dict) -> list[str]:
    """fully_shard in accelerate's order (accelerate/utils/fsdp_utils.py): activation checkpointing on the wrap
    units when the configuration asks for it, then the wrap units bottom-up, the input embeddings (when not
    tied to the head), the head with the final norm if the base model has one as a direct child (TinyLMM's
    sits inside its LLM, so the head alone), left unsharded between forward and backward, and the root.
    Returns the classes of the wrap units."""
    policy = _wrap_policy(model, settings)
    units = [(name, module) for name, module in model.named_modules() if name and policy(module)]
    classes = [type(module).__name__ for _, module in units]
    if settings.get("fsdp_activation_checkpointing", False):
        for name, module in units:
            model.set_submodule(name, checkpoint_wrapper(module, preserve_rng_state=False))
    reshard = settings.get("fsdp_reshard_after_forward", True)
    assert isinstance(reshard, bool), (
        f"FSDP2 takes true or false as fsdp_reshard_after_forward, not {reshard!r}"
    )
    for _, module in reversed(units):  # named_modules lists parents before their children
        if not isinstance(module, FSDPModule):
            fully_shard(module, reshard_after_forward=reshard)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if embed.weight is not head.weight and not isinstance(embed, FSDPModule):
        fully_shard(embed, reshard_after_forward=reshard)
    base = getattr(model, model.base_model_prefix)
    norms = [m for m in base.children() if "Norm" in type(m).__name__]
    fully_shard(
        [m for m in [*norms[-1:], head] if not isinstance(m, FSDPModule)], reshard_after_forward=False
    )
    fully_shard(model)
    assert all(isinstance(module, FSDPModule) for _, module in units)
    return classes


def _text_only(row: dict) -> dict:
    conversation = [
        {**turn, "value": turn["value"].replace("<image>\n", "")} for turn in row["conversations"]
    ]
    return {"id": row["id"], "conversations": conversation}


def _global_batches(folder, text_only_step: int | None = None) -> list[list[dict]]:
    """STEPS global batches of WORLD * PER_RANK rows (images written into `folder`): one-turn chats in the first
    half of each (rank 0's), three-turn chats in the second (rank 1's), so that the ranks supervise different
    numbers of tokens. `text_only_step`: in that step rank 1's chats have no image while rank 0's have."""
    names = write_images(folder, STEPS * WORLD * PER_RANK)
    half = STEPS * PER_RANK
    rows = chat_rows(names[:half], turns=1) + chat_rows(names[half:], turns=3)
    if text_only_step is not None:
        first = half + text_only_step * PER_RANK
        rows[first : first + PER_RANK] = [_text_only(row) for row in rows[first : first + PER_RANK]]
    rows = [llava_row(row, i, str(folder)) for i, row in enumerate(rows)]
    short, long = rows[:half], rows[half:]
    return [
        short[s * PER_RANK : (s + 1) * PER_RANK] + long[s * PER_RANK : (s + 1) * PER_RANK]
        for s in range(STEPS)
    ]


def _train(rank: int, world: int, rendezvous: str, batches: list[list[dict]], out: str) -> None:
    """SGD steps of the tiny model on this rank's share of each global batch, with the trainer's loss: the sum
    over this rank's supervised tokens divided by the global count of supervised tokens, times the number of
    processes (FSDP averages the gradients over them, as DDP does). Rank 0 saves the weights whole, the names
    of those that were sharded, and what the FSDP wrapping did. The processes meet through the file
    `rendezvous` (no port to pick that another process could take first)."""
    torch.set_num_threads(1)
    if world > 1:
        # A collective that one process never joins fails after this long instead of hanging.
        timeout = datetime.timedelta(seconds=120)
        address = f"file://{rendezvous}"
        dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world, timeout=timeout)
    try:
        model, processor = model_and_processor("chatml")
        ModulePlan(model, TRAIN_MODULES).apply(model)
        add_supervised_loss(model)
        units = _apply_fsdp(model, _fsdp_settings()) if world > 1 else []
        model.model.vision_in_every_step = world > 1  # as TinyLMMTrainer sets it under FSDP
        collator = TinyLMMCollator(processor, max_length=128, packing=True)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        counts = []
        for rows in batches:
            share = len(rows) // world
            batch = collator(rows[rank * share : (rank + 1) * share])
            for key in (DROPPED_KEY, SKIPPED_KEY, TOKENS_KEY):
                del batch[key]
            outputs = model(**batch, supervised_loss=True)
            count = outputs.num_tokens.detach().clone()
            if world > 1:
                dist.all_reduce(count)
            (outputs.loss / count.clamp(min=1) * world).backward()
            optimizer.step()
            optimizer.zero_grad()
            counts.append(int(outputs.num_tokens))
        weights, sharded = {}, []
        for name, p in model.named_parameters():
            name = name.replace(CHECKPOINT_PREFIX, "")
            if isinstance(p, DTensor):
                if any(isinstance(s, Shard) for s in p.placements) and p.to_local().numel() < p.numel():
                    sharded.append(name)
                p = p.full_tensor()
            weights[name] = p.detach().clone()
        wrapped = sum(isinstance(m, CheckpointWrapper) for m in model.modules())
        if rank == 0:
            info = {"units": units, "checkpointed": wrapped, "counts": counts}
            torch.save({"weights": weights, "sharded": sharded, **info}, out)
        if world > 1:
            dist.barrier()
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.parametrize("text_only_step", [None, 1], ids=["images", "one-rank-text-only"])
def test_fsdp2_on_the_cpu_two_processes_end_with_the_weights_of_one(tmp_path, text_only_step):
    """FSDP2 as examples/accelerate/fsdp.yaml sets it up, applied with torch's fully_shard on two CPU processes
    (gloo): with packing and the supervised-positions loss, they end with the weights of one process that
    trains on the whole global batches; also when, in one step, one process's batch has no image while the
    other's has (the vision blocks' gathers must still meet)."""
    batches = _global_batches(tmp_path / "images", text_only_step)
    args = (WORLD, str(tmp_path / "rendezvous"), batches, str(tmp_path / "fsdp.pt"))
    mp.spawn(_train, args=args, nprocs=WORLD)
    _train(0, 1, "", batches, str(tmp_path / "one.pt"))
    sharded, whole = torch.load(tmp_path / "fsdp.pt"), torch.load(tmp_path / "one.pt")

    settings = _fsdp_settings()
    model = model_and_processor("chatml")[0]
    assert set(sharded["units"]) == _wrap_class_names(model, settings)
    if settings.get("fsdp_activation_checkpointing"):
        assert sharded["checkpointed"] == len(sharded["units"]) > 0
    assert sharded["sharded"] == list(whole["weights"])  # every parameter was split over the two processes
    assert sharded["counts"][0] != whole["counts"][0] // 2  # the ranks supervise different numbers of tokens
    start = dict(model.named_parameters())
    assert whole["weights"].keys() == start.keys()
    plan = ModulePlan(model, TRAIN_MODULES)
    for name, weight in whole["weights"].items():
        assert torch.equal(weight, start[name].detach()) != plan.trains(name), name  # trained iff trainable
        torch.testing.assert_close(
            sharded["weights"][name], weight, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_a_batch_without_images_runs_the_tower_when_asked_and_adds_nothing():
    """Under FSDP / ZeRO-3 the trainer sets `vision_in_every_step`: a text-only training batch runs the vision
    tower (on a blank crop) so that every process gathers its blocks, with the same loss and zero gradients."""
    model = tiny_model().train()
    ids = torch.randint(0, IMAGE_TOKEN, (2, 7), generator=torch.Generator().manual_seed(0))
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    plain = model(input_ids=ids, labels=ids).loss
    assert not calls
    model.model.vision_in_every_step = True
    loss = model(input_ids=ids, labels=ids).loss
    assert calls and torch.equal(loss, plain)
    loss.backward()
    tower = list(model.model.vision_tower.parameters()) + list(model.model.connector.parameters())
    assert all(p.grad is not None and not p.grad.any() for p in tower)
    calls.clear()
    model.eval()(input_ids=ids)
    assert not calls  # only in training
