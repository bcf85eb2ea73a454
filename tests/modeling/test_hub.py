import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import image_prompt, pixels, tiny_model
from isolated import run_isolated
from transformers import AutoModel, AutoModelForImageTextToText

from modeling_tinylmm import TinyLMMForConditionalGeneration, TinyLMMModel

CODE_FILES = {
    "configuration_tinylmm.py",
    "modeling_tinylmm.py",
    "connectors.py",
    "vision_features.py",
    "visual_layout.py",
    "connector_plugins.py",
}


def test_auto_classes_are_registered(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path)) is TinyLMMForConditionalGeneration
    assert type(AutoModel.from_pretrained(tmp_path)) is TinyLMMModel


def test_save_writes_safetensors_auto_map_and_code(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    assert CODE_FILES <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_tinylmm.TinyLMMConfig"
    assert auto_map["AutoModelForImageTextToText"] == "modeling_tinylmm.TinyLMMForConditionalGeneration"


@pytest.mark.parametrize(
    ("vision", "text", "connector"),
    [("siglip", "qwen2", "mlp2x_gelu"), ("convnext", "gpt2", "convnext_stage")],
)
def test_remote_code_loads_without_tinylmm_and_reproduces_logits(tmp_path, vision, text, connector):
    model = tiny_model(
        vision, text, connector, connector_config={"depth": 1} if connector == "convnext_stage" else None
    )
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    ids, px = image_prompt(model.config), pixels(model.config)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=px).logits
    torch.save({"ids": ids, "px": px, "logits": expected}, tmp_path / "io.pt")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    out = run_isolated(
        f"""
        import torch
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True)
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            logits = model(input_ids=io["ids"], pixel_values=io["px"]).logits
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        print("EQUAL" if torch.equal(logits, io["logits"]) else "DIFFERENT")
        """,
        cwd=workdir,
        modules_cache=tmp_path / "modules",
    )
    assert out.strip().splitlines()[-1] == "EQUAL"


class _FakeHub:
    """Stands in for the Hub API: records the commit and writes its files into a local folder."""

    def __init__(self, root):
        self.root, self.commits = root, []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, create_pr=False, **kwargs):
        self.commits.append(
            {"repo_id": repo_id, "create_pr": create_pr, "files": [op.path_in_repo for op in operations]}
        )
        for op in operations:
            target = self.root / repo_id / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(op.path_or_fileobj, target)
        return SimpleNamespace(commit_url=f"local://{repo_id}")


def test_push_to_hub_uploads_weights_and_code(tmp_path, monkeypatch):
    import transformers.utils.hub as hub

    fake = _FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hub, "hf_api", lambda: fake)
    monkeypatch.setattr(
        hub,
        "create_and_tag_model_card",
        lambda repo_id, tags=None, **kw: SimpleNamespace(
            save=lambda path: open(path, "w").write(f"# {repo_id}\n")
        ),
    )
    model = tiny_model("dinov2", "phi3")
    model.push_to_hub("me/tiny-lmm", create_pr=False)
    (commit,) = fake.commits
    assert commit["repo_id"] == "me/tiny-lmm" and commit["create_pr"] is False
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} | CODE_FILES <= set(
        commit["files"]
    )
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "hub" / "me/tiny-lmm")
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
