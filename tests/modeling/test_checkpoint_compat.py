"""Checkpoints keep loading across versions.

- Every folder in tests/fixtures/tinylmm_*/ (a checkpoint an earlier tinylmm wrote, with its expected
  logits; tests/fixtures/make_checkpoint_fixture.py) loads through the installed package and, with the code
  copied into it, through `trust_remote_code` where tinylmm cannot be imported, and gives those logits.
- A checkpoint saved under one environment loads with `trust_remote_code` under another (other versions of
  transformers and the rest), both ways, with equal logits. The other environment's interpreter comes from
  TINYLMM_OTHER_PYTHON (.ci/run sets it to the other of its two environments); it needs tinylmm installed.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import image_prompt, pixels, tiny_model
from isolated import run_isolated
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from modeling_tinylmm import TinyLMMForConditionalGeneration

TESTS = Path(__file__).resolve().parents[1]
FIXTURES = sorted((TESTS / "fixtures").glob("tinylmm_*/"))
OTHER_PYTHON = "TINYLMM_OTHER_PYTHON"

# Same torch build, same threads (1), same weights: bit-identical across transformers 5.20-5.24 today; what
# may differ later is only how a release orders the arithmetic (e.g. its attention path), well under this.
TOLERANCE = dict(rtol=1e-5, atol=1e-5)

# Run where tinylmm cannot be imported: load `folder` with its own code, write the logits for `io`.
LOAD_REMOTE = """
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

model = AutoModelForImageTextToText.from_pretrained({folder!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
io = load_file({io!r})
with torch.no_grad():
    logits = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
save_file({{"logits": logits.contiguous()}}, {out!r})
import transformers
print(transformers.__version__)
"""

# Run with tinylmm installed: save a tiny checkpoint and the logits it gives.
SAVE = """
import sys

sys.path.insert(0, {tests!r})
import torch
import transformers
from conftest import image_prompt, pixels, tiny_model
from safetensors.torch import save_file

model = tiny_model("siglip", "qwen2", seed=3)
model.save_pretrained({folder!r})
io = {{"input_ids": image_prompt(model.config), "pixel_values": pixels(model.config, seed=3)}}
with torch.no_grad():
    io["logits"] = model(**io).logits.contiguous()
save_file(io, {io_path!r})
print(transformers.__version__)
"""


def _remote_logits(
    folder: Path, io: Path, tmp_path: Path, python: str | None = None
) -> tuple[torch.Tensor, str]:
    """Logits of `folder` loaded with trust_remote_code by `python` (default: this one) where tinylmm is not
    importable, and that environment's transformers version."""
    out = tmp_path / f"remote-logits-{len(list(tmp_path.glob('remote-logits-*')))}.safetensors"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir(exist_ok=True)
    code = LOAD_REMOTE.format(folder=str(folder), io=str(io), out=str(out))
    stdout = run_isolated(code, cwd=workdir, modules_cache=tmp_path / "modules", python=python)
    return load_file(out)["logits"], stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_committed_checkpoint_loads_through_the_package(fixture):
    model, info = TinyLMMForConditionalGeneration.from_pretrained(fixture, output_loading_info=True)
    assert not any(info.values()), info  # no weight missing, unexpected, mismatched or left unloaded
    assert type(AutoModelForImageTextToText.from_pretrained(fixture)) is TinyLMMForConditionalGeneration
    io = load_file(fixture / "expected.safetensors")
    with torch.no_grad():
        logits = model.eval()(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
    torch.testing.assert_close(logits, io["logits"], **TOLERANCE)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_committed_checkpoint_loads_with_its_own_code(fixture, tmp_path):
    folder = tmp_path / fixture.name
    shutil.copytree(fixture, folder)  # the loader must not need to write next to the committed files
    logits, _ = _remote_logits(folder, folder / "expected.safetensors", tmp_path)
    torch.testing.assert_close(logits, load_file(fixture / "expected.safetensors")["logits"], **TOLERANCE)


def test_a_checkpoint_fixture_is_committed():
    assert FIXTURES, "no tests/fixtures/tinylmm_*/ checkpoint: run tests/fixtures/make_checkpoint_fixture.py"
    for fixture in FIXTURES:
        size = sum(p.stat().st_size for p in fixture.iterdir())
        assert size < 400 * 1024, f"{fixture.name} is {size / 1024:.0f} KiB: keep the fixture tiny"


def _other_python() -> str:
    python = os.environ.get(OTHER_PYTHON)
    if not python:
        reason = (
            f"{OTHER_PYTHON} is not set, so no checkpoint was carried to another environment: set it to the "
            "python of a second environment with tinylmm installed (.ci/run does, both ways)."
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def test_checkpoint_saved_here_loads_in_the_other_environment(tmp_path):
    python = _other_python()
    model = tiny_model("siglip", "qwen2", seed=3)
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    io = {"input_ids": image_prompt(model.config), "pixel_values": pixels(model.config, seed=3)}
    with torch.no_grad():
        expected = model(**io).logits
    save_file(io, tmp_path / "io.safetensors")
    logits, there = _remote_logits(folder, tmp_path / "io.safetensors", tmp_path, python=python)
    torch.testing.assert_close(
        logits, expected, **TOLERANCE, msg=lambda m: f"loaded under transformers {there}: {m}"
    )


def test_checkpoint_saved_in_the_other_environment_loads_here(tmp_path):
    python = _other_python()
    folder, io = tmp_path / "checkpoint", tmp_path / "io.safetensors"
    code = SAVE.format(tests=str(TESTS), folder=str(folder), io_path=str(io))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"saving under {python} failed:\n{proc.stderr[-4000:]}"
    there = proc.stdout.strip().splitlines()[-1]
    logits, _ = _remote_logits(folder, io, tmp_path)
    torch.testing.assert_close(
        logits, load_file(io)["logits"], **TOLERANCE, msg=lambda m: f"saved under transformers {there}: {m}"
    )
