"""A connector from a plugin package travels with the checkpoints that use it."""

import sys
import textwrap

import pytest
import torch
from conftest import IMAGE_TOKEN, image_prompt, pixels, text_config, vision_config
from isolated import run_isolated
from transformers import AutoModelForImageTextToText

import modeling_tinylmm.connectors as connectors
from modeling_tinylmm import TinyLMMConfig, TinyLMMForConditionalGeneration

PLUGIN = '''
"""A plugin's connector: mean-pools the patches into one token per row of the grid."""

import torch
from torch import nn
from transformers import initialization as init

from modeling_tinylmm import Connector, TinyLMMConfig, register_connector


@register_connector("row_pool")
class RowPool(Connector):
    spatial = False
    needs_grid = True

    @classmethod
    def num_tokens(cls, config: TinyLMMConfig, num_features, grid):
        return grid[0]

    def __init__(self, config):
        super().__init__()
        self.proj = nn.Linear(config.feature_width, config.text_config.hidden_size)
        self.scale = nn.Parameter(torch.zeros(config.text_config.hidden_size))

    def init_weights(self):
        init.normal_(self.scale, std=0.5)

    def forward(self, features, hidden_states, grid):
        rows = features.unflatten(1, grid).mean(2)
        return self.proj(rows) * (1 + self.scale)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed plugin package `tiny_plugin` whose module registers `row_pool`; unregistered afterwards."""
    package = tmp_path / "site" / "tiny_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pooling.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import tiny_plugin.pooling  # noqa: F401  (registers the connector)

    yield "tiny_plugin.pooling"
    connectors.CONNECTORS.pop("row_pool", None)
    for name in ("tiny_plugin.pooling", "tiny_plugin"):
        sys.modules.pop(name, None)


def _model():
    torch.manual_seed(0)
    config = TinyLMMConfig(
        vision_config=vision_config("siglip").to_dict(),
        text_config=text_config("qwen2").to_dict(),
        connector_type="row_pool",
        image_token_id=IMAGE_TOKEN,
    )
    return TinyLMMForConditionalGeneration(config).eval()


def test_the_connector_initialises_its_own_weights(plugin):
    model = _model()
    assert model.config.connector_plugin == plugin
    assert model.model.connector.scale.std() > 0.1  # its own hook ran; the model holds no list of classes


def test_a_plugin_connector_travels_with_its_checkpoint(plugin, tmp_path):
    model = _model()
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    carried = (folder / "connector_plugins.py").read_text()
    assert "from .connectors import Connector, register_connector" in carried
    assert "from .configuration_tinylmm import TinyLMMConfig" in carried
    assert "modeling_tinylmm import" not in carried.replace("from .", "")
    ids, px = image_prompt(model.config), pixels(model.config)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=px).logits
    torch.save({"ids": ids, "px": px, "logits": expected}, tmp_path / "io.pt")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    # A process where neither tinylmm nor the plugin can be imported.
    out = run_isolated(
        f"""
        import importlib.util, torch
        from transformers import AutoModelForImageTextToText
        assert importlib.util.find_spec("tiny_plugin") is None
        model = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True)
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            logits = model(input_ids=io["ids"], pixel_values=io["px"]).logits
        print(model.config.connector_plugin, type(model.model.connector).__module__.rpartition(".")[2])
        print("EQUAL" if torch.equal(logits, io["logits"]) else "DIFFERENT")
        """,
        cwd=workdir,
        modules_cache=tmp_path / "modules",
    )
    recorded, last = out.strip().splitlines()[-2:]
    assert recorded == f"{plugin} connector_plugins"
    assert last == "EQUAL"


def test_a_missing_plugin_is_named(plugin, tmp_path):
    _model().save_pretrained(tmp_path)
    connectors.CONNECTORS.pop("row_pool")  # as in a process where the plugin is not installed
    with pytest.raises(
        ValueError, match=rf"'row_pool' comes from the plugin module '{plugin}'.*trust_remote_code"
    ):
        AutoModelForImageTextToText.from_pretrained(tmp_path)


def test_a_plugin_module_that_cannot_travel_is_refused_at_save(plugin, tmp_path):
    import tiny_plugin.pooling as module

    source = (tmp_path / "site" / "tiny_plugin" / "pooling.py").read_text()
    (tmp_path / "site" / "tiny_plugin" / "pooling.py").write_text(source + "\nfrom . import helpers\n")
    model = _model()
    assert module.__name__ == plugin
    with pytest.raises(ValueError, match="imports relatively .* self-contained"):
        model.save_pretrained(tmp_path / "checkpoint")
