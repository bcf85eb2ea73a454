import pytest
import torch
from conftest import image_prompt, pixels, text_config, tiny_config, tiny_model, vision_config
from torch import nn
from transformers import AutoModel, Blip2QFormerModel

import modeling_tinylmm.connectors as connectors
from modeling_tinylmm import (
    CONNECTORS,
    Connector,
    TinyLMMConfig,
    TinyLMMForConditionalGeneration,
    register_connector,
)

# Each connector with an encoder it suits, and the tokens one 32 px image gives (4x4 patches; 3 blocks).
CASES = [
    ("identity", "siglip", {}, 16),
    ("linear", "clip", {}, 16),
    ("mlp2x_gelu", "dinov2", {}, 16),
    ("mlp3x_gelu", "siglip", {}, 16),
    ("resampler", "clip", {"num_queries": 8, "num_layers": 2}, 8),
    ("qformer", "siglip", {"num_queries": 6}, 6),
    ("dense_sti", "clip", {"dense_layers": [0, 1]}, 16 + 2 * 2),
    ("dense_sci", "siglip", {}, 16),
    ("dense_dci", "clip", {"num_groups": 3}, 16),
    ("pixel_shuffle", "siglip", {"scale_factor": 2}, 4),
    ("convnext_stage", "convnext", {"depth": 2}, 1),  # ConvNeXt: 2x2 grid at stride 32 -> 1x1
]


def test_every_builtin_connector_is_covered():
    assert {name for name, *_ in CASES} | {"mlp{N}x_gelu"} >= set(CONNECTORS) - {"mlp{N}x_gelu"}
    assert set(CONNECTORS) >= {
        "identity",
        "linear",
        "mlp{N}x_gelu",
        "resampler",
        "qformer",
        "dense_sti",
        "dense_sci",
        "dense_dci",
        "pixel_shuffle",
        "convnext_stage",
    }


@pytest.mark.parametrize(("connector", "vision", "options", "tokens"), CASES)
def test_connector_token_count_and_training(connector, vision, options, tokens):
    model = tiny_model(vision, "llama", connector, connector_config=options).train()
    assert model.config.image_seq_length == tokens
    px = pixels(model.config, n=2)
    features = model.get_image_features(px)
    assert [tuple(f.shape) for f in features] == [(tokens, 32)] * 2
    ids = image_prompt(model.config)
    model(input_ids=ids, pixel_values=px[:1], labels=ids).loss.backward()
    connector_params = dict(model.model.connector.named_parameters())
    missing = [n for n, p in connector_params.items() if p.grad is None]
    assert missing == []


def test_mlp_family_depth():
    for depth in (1, 2, 4):
        model = tiny_model(connector=f"mlp{depth}x_gelu")
        linears = [m for m in model.model.connector.modules() if isinstance(m, nn.Linear)]
        assert len(linears) == depth
        assert linears[0].in_features == 32 and all(m.out_features == 32 for m in linears)


def test_names_match_exactly():
    for name in ("MLP2x_gelu", "mlp2x_gelu ", "mlpx_gelu", "Identity"):
        with pytest.raises(ValueError, match="unknown connector"):
            tiny_config(connector=name)


def test_register_a_connector_in_a_few_lines():
    try:

        @register_connector("test_mean_pool")
        class MeanPool(Connector):
            spatial = False

            @classmethod
            def num_tokens(cls, config, num_features, grid):
                return 1

            def __init__(self, config):
                super().__init__()
                self.proj = nn.Linear(config.feature_width, config.text_config.hidden_size)

            def forward(self, features, hidden_states, grid):
                return self.proj(features.mean(1, keepdim=True))

        model = tiny_model(connector="test_mean_pool")
        assert model.config.image_seq_length == 1
        assert model.get_image_features(pixels(model.config))[0].shape == (1, 32)
        with pytest.raises(ValueError, match="already registered"):
            register_connector("test_mean_pool")(MeanPool)
    finally:
        CONNECTORS.pop("test_mean_pool", None)


def test_third_party_connectors_come_from_entry_points(monkeypatch):
    class FakeEntryPoint:
        name = "test_plugin"

        def load(self):
            @register_connector("test_plugin")
            class Plugin(connectors.LinearConnector):
                pass

            return Plugin

    seen_groups = []

    def fake_entry_points(group):
        seen_groups.append(group)
        return [FakeEntryPoint()]

    monkeypatch.setattr(connectors, "entry_points", fake_entry_points)
    monkeypatch.setattr(connectors, "_entry_points_loaded", False)
    try:
        model = tiny_model(connector="test_plugin")
        assert seen_groups == ["tinylmm.connectors"]
        assert type(model.model.connector).__name__ == "Plugin"
    finally:
        CONNECTORS.pop("test_plugin", None)


def _reference_hidden_states(model, px):
    """Patch tokens of every hidden state of an untrimmed tower with the same weights (CLIP: CLS dropped)."""
    full = AutoModel.from_config(model.config.vision_config)
    full.load_state_dict(model.model.vision_tower.state_dict(), strict=False)
    with torch.no_grad():
        return [h[:, 1:] for h in full(px, output_hidden_states=True).hidden_states]


def test_dense_sti_geometry_of_clip_large():
    # CLIP-L/14 at 336 px: 24 blocks, 576 patches; layers 7 and 15 pooled 8x -> 576 + 72 + 72 = 720 tokens.
    vision = vision_config(
        "clip",
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=24,
        num_attention_heads=2,
        image_size=336,
        patch_size=14,
    )
    config = TinyLMMConfig(vision_config=vision, text_config=text_config("llama"), connector_type="dense_sti")
    assert config.connector_class.vision_layers(config) == [7, 15]
    assert config.image_seq_length == 720
    model = TinyLMMForConditionalGeneration(config).eval()
    px = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        features = model.get_image_features(px)[0]
    assert features.shape == (720, 32)
    hs = _reference_hidden_states(model, px)
    pool = lambda h: h.unflatten(1, (72, 8)).mean(2)  # noqa: E731
    expected = model.model.connector.mlp(torch.cat([hs[-2], pool(hs[7]), pool(hs[15])], dim=1))
    torch.testing.assert_close(features, expected[0])


def test_dense_sci_and_dci_fuse_the_right_layers():
    px = None
    for connector, groups in (("dense_sci", None), ("dense_dci", 2)):
        vision = vision_config("clip", num_hidden_layers=4)
        options = {"num_groups": groups} if groups else {"dense_layers": [0, 2]}
        model = TinyLMMForConditionalGeneration(
            TinyLMMConfig(
                vision_config=vision,
                text_config=text_config("llama"),
                connector_type=connector,
                connector_config=options,
            )
        ).eval()
        px = pixels(model.config) if px is None else px
        with torch.no_grad():
            features = model.get_image_features(px)[0]
        hs = _reference_hidden_states(model, px)
        if connector == "dense_sci":
            fused = torch.cat([hs[-2], hs[0], hs[2]], dim=-1)  # 3C
        else:  # HS[0..3] in two groups: mean(HS0, HS1), mean(HS2, HS3); the last block's output unused
            fused = torch.cat([hs[-2], (hs[0] + hs[1]) / 2, (hs[2] + hs[3]) / 2], dim=-1)
        assert model.model.connector.mlp[0].in_features == fused.shape[-1]
        torch.testing.assert_close(features, model.model.connector.mlp(fused)[0])


def test_convnext_stage_geometry_of_convllava():
    # ConvNeXt with total stride 32, plus stage 5 (stride 64): 1536 px -> 24 x 24 = 576 tokens.
    vision = vision_config("convnext", hidden_sizes=[4, 4, 4, 8], image_size=1536)
    config = TinyLMMConfig(
        vision_config=vision, text_config=text_config("llama"), connector_type="convnext_stage"
    )
    assert config.feature_grid == (48, 48) and config.connector_grid == (24, 24)
    assert config.image_seq_length == 576
    model = TinyLMMForConditionalGeneration(config).eval()
    stage = model.model.connector.stage
    assert len(stage.layers) == 6 and stage.downsampling_layer[1].out_channels == 16  # 2C, six blocks
    with torch.no_grad():
        features = model.get_image_features(torch.randn(1, 3, 1536, 1536))[0]
    assert features.shape == (576, 32)


def test_pixel_shuffle_keeps_space_local():
    model = tiny_model("siglip", connector="pixel_shuffle")
    connector = model.model.connector
    features = torch.randn(1, 16, 32)  # 4x4 grid
    base = connector(features, {}, (4, 4))
    bumped = features.clone()
    bumped[0, 5] += 1.0  # patch (1, 1) lies in the top-left 2x2 block
    changed = (connector(bumped, {}, (4, 4)) - base).abs().sum(-1)[0] > 0
    assert base.shape == (1, 4, 32)
    assert changed.tolist() == [True, False, False, False]


def test_resampler_is_blind_to_token_order():
    model = tiny_model("clip", connector="resampler", connector_config={"num_queries": 8})
    connector = model.model.connector
    features = torch.randn(2, 16, 32)
    perm = torch.randperm(16)
    with torch.no_grad():
        out = connector(features, {}, None)
        shuffled = connector(features[:, perm], {}, None)
    assert out.shape == (2, 8, 32)
    torch.testing.assert_close(out, shuffled, atol=1e-5, rtol=1e-5)
    # per layer: LN(x), LN(latents), the feed-forward LN; then a final LN
    assert sum(isinstance(m, nn.LayerNorm) for m in connector.modules()) == 3 * 3 + 1


def test_qformer_reuses_transformers():
    model = tiny_model("siglip", connector="qformer", connector_config={"num_queries": 4, "num_layers": 1})
    assert isinstance(model.model.connector.qformer, Blip2QFormerModel)
    assert model.model.connector.qformer.config.encoder_hidden_size == 32


def test_non_spatial_connectors_refuse_anyres():
    for connector in ("resampler", "qformer", "dense_sti"):
        with pytest.raises(ValueError, match="does not keep a patch grid"):
            tiny_config(connector=connector, image_aspect_ratio="anyres_max_9")
