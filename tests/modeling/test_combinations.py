"""Every encoder and every LLM family with mlp2x_gelu: trains, generates, round-trips."""

import pytest
import torch
from conftest import IMAGE_TOKEN, TEXT, VISION, image_prompt, pixels, tiny_model

from modeling_tinylmm import TinyLMMForConditionalGeneration

COMBINATIONS = [(v, "llama") for v in VISION] + [("clip", t) for t in TEXT if t != "llama"]


@pytest.mark.parametrize(("vision", "text"), COMBINATIONS)
def test_encoder_llm_combination(vision, text, tmp_path):
    model = tiny_model(vision, text).train()
    ids, px = image_prompt(model.config, n_images=2), pixels(model.config, n=2)
    labels = ids.masked_fill(ids == IMAGE_TOKEN, -100)
    loss = model(input_ids=ids, pixel_values=px, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.connector.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.model.vision_tower.parameters())

    model.eval()
    out = model.generate(
        input_ids=ids, pixel_values=px, max_new_tokens=3, do_sample=False, suppress_tokens=[IMAGE_TOKEN]
    )
    assert out.shape == (1, ids.shape[1] + 3)

    model.save_pretrained(tmp_path)
    reloaded = TinyLMMForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(
            reloaded(input_ids=ids, pixel_values=px).logits, model(input_ids=ids, pixel_values=px).logits
        )
