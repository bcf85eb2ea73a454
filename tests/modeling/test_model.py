import pytest
import torch
from conftest import IMAGE_TOKEN, VISION, VOCAB, image_prompt, pixels, tiny_config, tiny_model
from transformers import AutoModel, CLIPVisionModel

from modeling_tinylmm import TinyLMMForConditionalGeneration


def _llm_inputs(model):
    """Capture what the LLM body receives."""
    seen = {}
    model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    return seen


def test_image_features_fill_the_placeholders_in_place(model):
    ids, px = image_prompt(model.config), pixels(model.config)
    seen = _llm_inputs(model)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=px)
        features = torch.cat(model.get_image_features(px))
        embeds = model.get_input_embeddings()(ids)
    mask = ids[0] == IMAGE_TOKEN
    assert out.logits.shape == (1, ids.shape[1], VOCAB)  # nothing spliced: one position per token
    assert torch.equal(seen["inputs_embeds"][0, mask], features)
    assert torch.equal(seen["inputs_embeds"][0, ~mask], embeds[0, ~mask])


def test_count_mismatch_states_both_counts(model):
    ids = image_prompt(model.config)
    with pytest.raises(ValueError, match="16 image tokens .* 32 features"):
        model(input_ids=ids, pixel_values=pixels(model.config, n=2))


def test_pixel_values_without_image_tokens(model):
    with pytest.raises(ValueError, match="0 image tokens .* 16 features"):
        model(input_ids=torch.tensor([[1, 5, 6]]), pixel_values=pixels(model.config))


def test_image_tokens_without_pixel_values(model):
    with pytest.raises(ValueError, match="16 image tokens but no pixel_values"):
        model(input_ids=image_prompt(model.config))


def test_text_only_batch_is_the_plain_llm(model):
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        reference = model.lm_head(model.model.language_model(input_ids=ids).last_hidden_state)
    assert torch.equal(logits, reference)


def _pad_batch(samples, pad_id=0):
    """Left-pad a list of (1, L) id tensors."""
    length = max(s.shape[1] for s in samples)
    ids = torch.full((len(samples), length), pad_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(samples):
        ids[i, length - s.shape[1] :] = s[0]
        mask[i, length - s.shape[1] :] = 1
    return ids, mask


@pytest.mark.parametrize("vision", ["clip", "convnext"])
def test_mixed_batch_matches_each_sample_alone(vision):
    model = tiny_model(vision)
    config = model.config
    two_images = image_prompt(config, n_images=2)
    text_only = torch.tensor([[1, 11, 12, 13, 14]])
    one_image = image_prompt(config, n_images=1, prefix=(1, 20))
    px_two, px_one = pixels(config, n=2, seed=1), pixels(config, n=1, seed=2)
    ids, mask = _pad_batch([two_images, text_only, one_image])
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, pixel_values=torch.cat([px_two, px_one])).logits
        alone = [
            model(input_ids=two_images, pixel_values=px_two).logits,
            model(input_ids=text_only).logits,
            model(input_ids=one_image, pixel_values=px_one).logits,
        ]
    for i, logits in enumerate(alone):
        torch.testing.assert_close(batch[i, -logits.shape[1] :], logits[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("text", ["llama", "gpt2"])
def test_generate_with_cache_matches_full_forward(text):
    model = tiny_model("siglip", text)
    ids, px = image_prompt(model.config), pixels(model.config)
    out = model.generate(
        input_ids=ids, pixel_values=px, max_new_tokens=8, do_sample=False, suppress_tokens=[IMAGE_TOKEN]
    )
    new = out[0, ids.shape[1] :]
    assert len(new) == 8
    with torch.no_grad():
        logits = model(input_ids=out[:, :-1], pixel_values=px).logits
    logits[..., IMAGE_TOKEN] = -float("inf")
    assert torch.equal(logits[0, ids.shape[1] - 1 :].argmax(-1), new)
    no_cache = model.generate(
        input_ids=ids,
        pixel_values=px,
        max_new_tokens=8,
        do_sample=False,
        use_cache=False,
        suppress_tokens=[IMAGE_TOKEN],
    )
    assert torch.equal(no_cache, out)


@pytest.mark.parametrize(
    ("vision", "strategy", "tokens"),
    [
        ("clip", "default", 16),  # CLS dropped
        ("clip", "full", 17),
        ("clip", "drop_first", 16),
        ("siglip", "default", 16),  # no CLS: every patch kept
        ("siglip", "drop_first", 15),  # as checkpoints trained on 728 of 729 patches
        ("dinov2", "default", 16),
    ],
)
def test_feature_selection_strategies(vision, strategy, tokens):
    model = tiny_model(vision, connector="identity", vision_feature_select_strategy=strategy)
    px = pixels(model.config, n=2)
    # Reference: an untrimmed tower with the same weights.
    reference = AutoModel.from_config(model.config.vision_config)
    reference.load_state_dict(model.model.vision_tower.state_dict(), strict=False)
    with torch.no_grad():
        features = model.get_image_features(px)
        hidden = reference(px, output_hidden_states=True).hidden_states[-2]
    assert model.config.image_seq_length == tokens
    assert [f.shape for f in features] == [(tokens, 32)] * 2
    assert torch.equal(torch.stack(features), hidden[:, hidden.shape[1] - tokens :])


def test_cnn_grid_becomes_row_major_tokens():
    model = tiny_model("convnext", connector="identity")  # last stage width 32 = LLM width
    px = pixels(model.config)
    with torch.no_grad():
        grid = model.model.vision_tower(px).last_hidden_state  # (1, 32, 2, 2)
        features = model.get_image_features(px)[0]
    assert torch.equal(features, grid[0].flatten(1).T)


def test_unused_vision_blocks_and_heads_are_dropped_and_every_parameter_learns():
    model = tiny_model("siglip").train()
    tower = model.model.vision_tower
    assert len(tower.encoder.layers) == 2  # layer -2 of 3 blocks needs only the first two
    assert not any(n.startswith(("head", "post_layernorm")) for n, _ in tower.named_parameters())
    ids = image_prompt(model.config)
    model(input_ids=ids, pixel_values=pixels(model.config), labels=ids).loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("clip", "qwen2").train()
        if checkpointing:
            # transformers 5.24 renamed gradient_checkpointing_enable (the old name warns, and goes in v6).
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable()
            else:
                model.gradient_checkpointing_enable()
            assert model.model.language_model.gradient_checkpointing
        ids = image_prompt(model.config)
        model(input_ids=ids, pixel_values=pixels(model.config), labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_attention_implementation_is_passed_through():
    logits = {}
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = TinyLMMForConditionalGeneration(tiny_config("siglip", "llama"))
        model.set_attn_implementation(impl)
        assert model.model.language_model.config._attn_implementation == impl
        assert model.model.vision_tower.config._attn_implementation == impl
        with torch.no_grad():
            logits[impl] = model(
                input_ids=image_prompt(model.config), pixel_values=pixels(model.config)
            ).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=1e-4)


def test_resize_token_embeddings(model):
    model.resize_token_embeddings(VOCAB + 4)
    assert model.config.text_config.vocab_size == VOCAB + 4
    assert model.lm_head.weight.shape[0] == VOCAB + 4
    ids = torch.cat([image_prompt(model.config), torch.tensor([[VOCAB + 3]])], dim=1)
    assert model(input_ids=ids, pixel_values=pixels(model.config)).logits.shape[-1] == VOCAB + 4


@pytest.mark.parametrize(("text", "tied"), [("gemma", True), ("gpt2", True), ("llama", False)])
def test_embeddings_tied_where_the_llm_ties_them(text, tied, tmp_path):
    model = tiny_model("clip", text)
    same = model.lm_head.weight is model.get_input_embeddings().weight
    assert same == tied
    model.save_pretrained(tmp_path)
    reloaded = TinyLMMForConditionalGeneration.from_pretrained(tmp_path)
    assert (reloaded.lm_head.weight is reloaded.get_input_embeddings().weight) == tied
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight)


def test_trimmed_tower_equals_the_full_one_on_the_layers_it_keeps():
    model = tiny_model("clip")
    full = CLIPVisionModel(model.config.vision_config)
    full.load_state_dict(model.model.vision_tower.state_dict(), strict=False)
    px = pixels(model.config)
    with torch.no_grad():
        mine = model.model.vision_tower(px, output_hidden_states=True).hidden_states
        theirs = full(px, output_hidden_states=True).hidden_states
    assert len(mine) == 3 and len(theirs) == 4
    for a, b in zip(mine, theirs[:3]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("vision", ["clip", "siglip", "dinov2"])
def test_embedding_output_as_the_feature_layer(vision):
    # HS[0] needs no block at all: the tower keeps none and its output is the embedding output.
    model = tiny_model(vision, connector="identity", vision_feature_layer=0)
    assert (
        len(model.model.vision_tower.encoder.get_submodule("layers" if vision != "dinov2" else "layer")) == 0
    )
    reference = AutoModel.from_config(model.config.vision_config)
    reference.load_state_dict(model.model.vision_tower.state_dict(), strict=False)
    px = pixels(model.config)
    with torch.no_grad():
        hidden = reference(px, output_hidden_states=True).hidden_states[0]
        features = model.get_image_features(px)[0]
    assert torch.equal(features, hidden[0, hidden.shape[1] - 16 :])


@pytest.mark.parametrize(
    ("model_type", "prefix"),
    [("dinov2_with_registers", 3), ("vit", 1), ("deit", 2), ("convnextv2", 0)],
)
def test_more_backbones_give_their_patches(model_type, prefix):
    from transformers import AutoConfig

    from modeling_tinylmm import TinyLMMConfig

    if model_type == "convnextv2":
        kwargs = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], image_size=32)
    else:
        kwargs = {k: v for k, v in VISION["clip"].items() if k != "model_type"}  # the same tiny ViT shape
        if model_type == "dinov2_with_registers":
            kwargs["num_register_tokens"] = 2
    vision = AutoConfig.for_model(model_type, **kwargs)
    config = TinyLMMConfig(
        vision_config=vision, text_config=tiny_config().text_config, connector_type="identity"
    )
    model = TinyLMMForConditionalGeneration(config)
    assert config.vision_backbone.num_prefix_tokens == prefix
    px = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        features = model.get_image_features(px)[0]
        hidden = model.model.vision_tower(px, output_hidden_states=True).hidden_states[-1]
    tokens = 1 if model_type == "convnextv2" else 16  # ConvNeXt V2: stride 32 -> 1x1
    assert features.shape == (tokens, 32) and config.image_seq_length == tokens
    if model_type != "convnextv2":
        assert torch.equal(features, hidden[0, prefix:])
    # Blocks after the feature layer and pooling heads are dropped: every tower parameter gets a gradient.
    model.get_image_features(px)[0].sum().backward()
    assert [n for n, p in model.model.vision_tower.named_parameters() if p.grad is None] == []
