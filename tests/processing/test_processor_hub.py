"""Saving and loading the processor: AutoProcessor in this process, and trust_remote_code in a clean process
where neither tinylmm package can be imported."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import torch
from _processor_fixtures import make_processor, rgb
from conftest import tiny_model
from transformers import AutoImageProcessor, AutoProcessor

from processors import TinyLMMImageProcessor, TinyLMMProcessor

PINPOINTS = [[32, 64], [64, 32], [64, 64]]
TEXT = ["<image> what is this ?", "<image> <image> two", "<video> frames", "no image"]


def inputs():
    images = [[rgb(90, 40, seed=1)], [rgb(20, 30, seed=2), rgb(30, 20, seed=3)], [], []]
    videos = [[], [], [[rgb(16, 16, seed=i) for i in range(3)]], []]
    return images, videos


def test_save_and_auto_load(tmp_path):
    processor = make_processor(image_aspect_ratio="anyres_max_4", image_grid_pinpoints=PINPOINTS)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["auto_map"] == {"AutoProcessor": "processing_tinylmm.TinyLMMProcessor"}
    assert saved["image_processor"]["crop_tokens"] == [4, 4]
    assert saved["image_processor"]["image_grid_pinpoints"] == PINPOINTS
    assert saved["image_token_id"] == processor.image_token_id
    assert (tmp_path / "chat_template.jinja").read_text() == processor.chat_template
    for name in ("processing_tinylmm.py", "image_processing_tinylmm.py", "chat_templates.py"):
        assert (tmp_path / name).is_file()

    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, TinyLMMProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), TinyLMMImageProcessor)
    images, videos = inputs()
    a = processor(text=TEXT, images=images, videos=videos, padding=True, return_tensors="pt")
    b = loaded(text=TEXT, images=images, videos=videos, padding=True, return_tensors="pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


REMOTE = textwrap.dedent(
    """
    import sys
    # Nothing of tinylmm may be importable here: drop the editable install's import hooks.
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f)]
    sys.path_hooks = [h for h in sys.path_hooks if "editable" not in repr(h)]
    sys.path = [p for p in sys.path if "editable" not in p]
    sys.path_importer_cache.clear()
    for name in ("processors", "modeling_tinylmm"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} is importable in the clean process")

    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, out = sys.argv[1], sys.argv[2]
    data = np.load(folder + "/inputs.npz")
    pil = lambda a: Image.fromarray(a)
    images = [[pil(data["a"])], [pil(data["b"]), pil(data["c"])], [], []]
    videos = [[], [], [[pil(f) for f in data["video"]]], []]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    batch = processor(text=TEXT, images=images, videos=videos, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    torch.save({**dict(batch), "logits": logits, "module": type(processor).__module__}, out)
    """
).replace("TEXT", repr(TEXT))


def test_trust_remote_code_in_a_clean_process(tmp_path):
    model = tiny_model(image_aspect_ratio="anyres_max_4", image_grid_pinpoints=PINPOINTS)
    processor = make_processor(config=model.config)
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    images, videos = inputs()
    np.savez(
        saved / "inputs.npz",
        a=np.asarray(images[0][0]),
        b=np.asarray(images[1][0]),
        c=np.asarray(images[1][1]),
        video=np.stack([np.asarray(f) for f in videos[2][0]]),
    )
    # a fresh copy in a folder of its own, loaded from a working directory outside the repository
    repo = tmp_path / "hub_copy"
    shutil.copytree(saved, repo)
    (tmp_path / "script.py").write_text(REMOTE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "script.py"), str(repo), str(tmp_path / "out.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt", weights_only=False)
    assert remote["module"].startswith("transformers_modules.")  # the copied code, not the package
    local = processor(text=TEXT, images=images, videos=videos, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "image_layout"):
        assert torch.equal(local[key], remote[key]), key
    with torch.no_grad():
        assert torch.allclose(model(**local).logits, remote["logits"], atol=1e-5)
