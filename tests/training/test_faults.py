"""Faults lose no work: checkpoints are whole or absent, resuming needs a complete one (the newest with
`True`), an unwritable output folder or a run with nothing to train on fails before anything is lost or
saved as if trained, and a missing starting folder says so."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_fixtures import (
    caption_rows,
    cpu_config,
    model_and_processor,
    one_thread,  # noqa: F401  (autouse fixture)
    write_images,
    write_json,
)
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from trainers.arguments import DataArguments, ModelArguments, RecipeArguments
from trainers.checkpoint import CheckpointError, check_resumable, resolve_resume
from trainers.data import load_training_data
from trainers.stages import STAGE_FILE, read_stage
from trainers.train import load_start, parse, train
from trainers.trainer import NoTrainingDataError, TinyLMMTrainer

SFT = RecipeArguments(recipe="test", stage="sft", train_modules=["connector", "language_model"])
ROOT = Path(__file__).resolve().parents[2]
RESUME_FILES = {"optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth", "model.safetensors"}


class _Killed(BaseException):
    """What a kill looks like to the code that runs: nothing after it (no except Exception) runs."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    names = write_images(folder, 6)
    dataset, _ = load_training_data(write_json(folder / "d.json", caption_rows(names)))
    return dataset


def _trainer(output_dir, dataset, **overrides) -> TinyLMMTrainer:
    model, processor = model_and_processor("chatml")
    options = dict(max_steps=6, save_strategy="steps", save_steps=3, warmup_steps=2)
    options.update(overrides)
    return TinyLMMTrainer(
        model,
        args=cpu_config(output_dir, **options),
        train_dataset=dataset,
        processing_class=processor,
        recipe=SFT,
    )


def _folders(out) -> list[str]:
    return sorted(n for n in os.listdir(out) if os.path.isdir(os.path.join(out, n)))


def _fail_saving_at(monkeypatch, step: int, error: BaseException):
    """Make the RNG-state step of checkpoint `step` fail (after the weights were written)."""
    original = Trainer._save_rng_state

    def save_rng_state(self, output_dir):
        if self.state.global_step == step:
            raise error
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", save_rng_state)


# -- checkpoints are whole or absent ----------------------------------------------------------------------


def test_a_save_that_fails_leaves_the_last_complete_checkpoint_resumable(tmp_path, data, monkeypatch):
    out = tmp_path / "out"
    _fail_saving_at(monkeypatch, 6, OSError(28, "No space left on device"))
    with pytest.raises(RuntimeError, match="saving .*checkpoint-6 failed .*No space left on device") as err:
        _trainer(out, data).train()
    assert str(err.value).endswith(f"The newest complete checkpoint is {out / 'checkpoint-3'}.")
    assert _folders(out) == ["checkpoint-3"]  # no checkpoint-6, no half-written folder
    assert (
        RESUME_FILES <= set(os.listdir(out / "checkpoint-3"))
        and read_stage(out / "checkpoint-3") == "test/sft"
    )
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-3")

    monkeypatch.undo()
    resumed = _trainer(out, data)
    resumed.train(resume_from_checkpoint="True")  # as the command line gives it: the newest checkpoint
    straight = _trainer(tmp_path / "straight", data)
    straight.train()
    assert resumed.state.global_step == 6
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)
    assert _folders(out) == ["checkpoint-3", "checkpoint-6"]


def test_a_killed_save_leaves_no_checkpoint_to_pick(tmp_path, data, monkeypatch):
    out = tmp_path / "out"
    _fail_saving_at(monkeypatch, 6, _Killed())
    with pytest.raises(_Killed):
        _trainer(out, data).train()
    # What the kill left: a folder that transformers' checkpoint lookup does not match, with weights in it.
    assert _folders(out) == ["checkpoint-3", "tmp-checkpoint-6"]
    assert "model.safetensors" in os.listdir(out / "tmp-checkpoint-6" / "checkpoint-6")
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-3")
    assert resolve_resume(True, out) == str(out / "checkpoint-3")

    monkeypatch.undo()
    resumed = _trainer(out, data)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    assert _folders(out) == ["checkpoint-3", "checkpoint-6"]  # the leftover is gone
    assert RESUME_FILES <= set(os.listdir(out / "checkpoint-6"))
    # Resuming a finished run runs no step, and that is not "nothing could be trained on".
    assert _trainer(out, data).train(resume_from_checkpoint=True).global_step == 6


def test_save_total_limit_and_a_second_run_in_the_same_folder(tmp_path, data):
    out = tmp_path / "out"
    _trainer(out, data, max_steps=4, save_steps=1, save_total_limit=2).train()
    assert _folders(out) == ["checkpoint-3", "checkpoint-4"]
    first = (out / "checkpoint-4" / "trainer_state.json").read_text()
    # A second run into the same folder replaces checkpoint-4 whole.
    _trainer(out, data, max_steps=4, save_steps=4, learning_rate=2e-3).train()
    assert _folders(out) == ["checkpoint-3", "checkpoint-4"]
    assert (out / "checkpoint-4" / "trainer_state.json").read_text() != first


# -- resuming ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("run")
    _trainer(out, data, max_steps=3).train()
    return out / "checkpoint-3"


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt"])
def test_resuming_without_optimizer_or_scheduler_state_is_an_error(tmp_path, data, checkpoint, missing):
    broken = tmp_path / "checkpoint-3"
    shutil.copytree(checkpoint, broken)
    os.remove(broken / missing)
    trainer = _trainer(tmp_path / "out", data)
    with pytest.raises(CheckpointError) as err:
        trainer.train(resume_from_checkpoint=str(broken))
    assert str(err.value).startswith(f"cannot resume from {broken}: {missing} missing, so the optimizer")
    assert trainer.state.global_step == 0  # refused before any step


def test_corrupt_trainer_state_names_the_file(tmp_path, data, checkpoint):
    broken = tmp_path / "checkpoint-3"
    shutil.copytree(checkpoint, broken)
    (broken / "trainer_state.json").write_text('{"global_step": 3, "log_hist')
    with pytest.raises(CheckpointError, match=rf"{broken / 'trainer_state.json'}: not valid JSON .* damaged"):
        _trainer(tmp_path / "out", data).train(resume_from_checkpoint=str(broken))
    assert check_resumable(str(checkpoint))["global_step"] == 3


def test_resume_true_without_a_checkpoint_is_an_error(tmp_path, data):
    (tmp_path / "out").mkdir()
    assert resolve_resume("false", tmp_path / "out") is None and resolve_resume(None, tmp_path) is None
    for value in (True, "True", "true"):
        with pytest.raises(
            CheckpointError, match=r"resume_from_checkpoint=True: no checkpoint-N folder in .*out"
        ):
            resolve_resume(value, tmp_path / "out")
    with pytest.raises(CheckpointError, match="checkpoint to resume from not found: .*nowhere"):
        _trainer(tmp_path / "out", data).train(resume_from_checkpoint=str(tmp_path / "nowhere"))


# -- nothing lost, nothing saved as if trained ------------------------------------------------------------


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    folder = tmp_path_factory.mktemp("start")
    model, processor = model_and_processor("chatml")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_unwritable_output_dir_fails_before_loading_anything(tmp_path, data, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    args = cpu_config(tmp_path / "file" / "out")
    with pytest.raises(PermissionError, match=r"output_dir .*file/out is not writable .* Choose another"):
        # The starting checkpoint does not exist either: the output folder is checked first.
        train(ModelArguments(str(tmp_path / "none")), DataArguments(), RecipeArguments(), args)

    def read_only(*args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr("tempfile.NamedTemporaryFile", read_only)
    trainer = _trainer(tmp_path / "ro", data)
    with pytest.raises(PermissionError, match=r"output_dir .*ro is not writable \(Read-only file system\)"):
        trainer.train()
    assert trainer.state.global_step == 0


def _stage(tmp_path, start, data_path, **data_kwargs):
    args = cpu_config(tmp_path / "out", **data_kwargs.pop("args", {}))
    return train(ModelArguments(str(start)), DataArguments(data_path=data_path, **data_kwargs), SFT, args)


def test_every_sample_too_long_fails_and_saves_no_stage(tmp_path, start):
    names = write_images(tmp_path, 4)
    data = write_json(tmp_path / "d.json", caption_rows(names))
    with pytest.raises(NoTrainingDataError) as err:
        _stage(tmp_path, start, data, args={"max_length": 8, "max_steps": 3})
    assert str(err.value) == (
        "no sample could be trained on in the whole run: 6 dropped for exceeding max_length=8 and 0 skipped for "
        "missing image files (a sample counts once per epoch it is read in). Raise max_length, check "
        "image_folder / the image paths, or fix the data; nothing was saved for this stage."
    )
    assert not {"model.safetensors", STAGE_FILE, "config.json"} & set(os.listdir(tmp_path / "out"))


def test_every_sample_too_long_writes_no_checkpoint_that_could_be_resumed(tmp_path, start):
    names = write_images(tmp_path, 4)
    data = write_json(tmp_path / "d.json", caption_rows(names))
    args = {"max_length": 8, "max_steps": 3, "save_strategy": "steps", "save_steps": 2}
    with pytest.raises(NoTrainingDataError, match="in the 2 steps before checkpoint-2: 4 dropped"):
        _stage(tmp_path, start, data, args=args)
    assert os.listdir(tmp_path / "out") == []


def test_streamed_samples_all_missing_images_stop_early(tmp_path, start):
    data = write_json(tmp_path / "d.jsonl", caption_rows([f"gone{i}.png" for i in range(4)]))
    with pytest.raises(NoTrainingDataError, match=r"in the first 100 samples read: 0 dropped .* 100 skipped"):
        _stage(tmp_path, start, data, streaming=True, skip_missing_images=True, args={"max_steps": 10_000})
    assert STAGE_FILE not in os.listdir(tmp_path / "out")


# -- a missing starting folder ----------------------------------------------------------------------------


def test_missing_start_folder_says_so_and_what_it_should_be(tmp_path):
    args = cpu_config(tmp_path / "out")
    recipe = RecipeArguments(recipe="base", stage="align", init_stage="build")
    with pytest.raises(FileNotFoundError) as err:
        load_start(ModelArguments(str(tmp_path / "checkpoints" / "build")), recipe, args)
    assert str(err.value).startswith(
        f"model_name_or_path {tmp_path / 'checkpoints' / 'build'}: no such folder."
    )
    assert "output of `tinylmm build`" in str(err.value)
    # "out/build" could be a Hub id: that is tried too, and the message says both.
    with pytest.raises(FileNotFoundError, match="out/build: no such folder, and no Hub model of that name"):
        load_start(ModelArguments("out/build"), recipe, args)


def test_unedited_packaged_recipe_names_its_missing_start_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_args, data_args, recipe, args = parse(["--config", "base_sft", "--bf16", "false"])  # a CPU
    with pytest.raises(FileNotFoundError) as err:
        train(model_args, data_args, recipe, args)
    assert str(err.value) == (
        "model_name_or_path checkpoints/base/align: no such folder. model_name_or_path should point at the "
        "output of the previous stage, 'base/align' (its output_dir): train that stage first, or pass "
        "--model_name_or_path with its folder."
    )
    assert json.loads(json.dumps(recipe.record()))["stage_id"] == "base/sft"


def test_two_process_checkpoints_hold_every_rank_and_no_staging_is_left(tmp_path, start):
    """Under DDP each process writes its RNG state into the staging folder; the rename waits for both."""
    names = write_images(tmp_path, 4)
    write_json(tmp_path / "data.json", caption_rows(names))
    (tmp_path / "recipe.yaml").write_text(
        f"model_name_or_path: {start}\ndata_path: {tmp_path / 'data.json'}\noutput_dir: {tmp_path / 'out'}\n"
        "train_modules: [connector]\nper_device_train_batch_size: 1\nmax_steps: 4\nsave_strategy: steps\n"
        "save_steps: 2\nbf16: false\nuse_cpu: true\nreport_to: none\ndisable_tqdm: true\n"
        "gradient_checkpointing: false\n"
    )
    driver = "import sys\nfrom trainers.train import parse, train\ntrain(*parse(sys.argv[1:]))\n"
    (tmp_path / "driver.py").write_text(driver)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    command += ["127.0.0.1", "--master_port", str(port), str(tmp_path / "driver.py")]
    command += ["--config", str(tmp_path / "recipe.yaml")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "out"
    assert _folders(out) == ["checkpoint-2", "checkpoint-4"]
    for checkpoint in _folders(out):
        files = set(os.listdir(out / checkpoint))
        assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "trainer_state.json"} <= files, files
