"""Bad training data gets an error that names the file, the sample and the fix; an edited file is read
again; image paths stay inside the image folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _train_fixtures import (
    caption_rows,
    model_and_processor,
    one_thread,  # noqa: F401  (autouse fixture)
    write_images,
    write_json,
)

from trainers.collator import TinyLMMCollator
from trainers.data import SampleError, llava_row, load_llava, load_training_data
from trainers.records import RecordFileError

ROOT = Path(__file__).resolve().parents[2]


def _row(image, answer="a red circle ."):
    return {
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image ."},
            {"from": "gpt", "value": answer},
        ],
    }


# -- image paths stay inside the image folder -------------------------------------------------------------


@pytest.mark.parametrize("escape", ["../secret.png", "sub/../../secret.png", "ABSOLUTE"])
def test_image_path_leading_outside_the_image_folder_is_refused(tmp_path, escape):
    images = tmp_path / "images"
    names = write_images(images, 1)
    write_images(tmp_path / "elsewhere", 1)
    (tmp_path / "elsewhere" / "img0.png").rename(tmp_path / "secret.png")
    path = str(tmp_path / "secret.png") if escape == "ABSOLUTE" else escape
    data = write_json(images / "d.json", [_row(names[0]), _row(path)])
    with pytest.raises(SampleError, match=r"sample 1: image path .* leads outside the image folder") as err:
        load_training_data(data, image_folder=str(images))
    assert path in str(err.value) and "--image_folder" in str(err.value)
    # The default image folder is the data file's own.
    with pytest.raises(SampleError, match="leads outside the image folder"):
        load_training_data(data)


def test_paths_inside_the_folder_and_links_placed_there_are_followed(tmp_path):
    """The check is on the normalised path: `sub/../img0.png` is inside; a symbolic link inside the folder
    that points elsewhere (an image folder linking to shared storage) is the folder owner's choice."""
    images = tmp_path / "images"
    names = write_images(images, 1)
    write_images(tmp_path / "shared", 2)
    os.symlink(tmp_path / "shared", images / "linked")
    data = write_json(images / "d.json", [_row(f"sub/../{names[0]}"), _row("linked/img1.png")])
    dataset, _ = load_training_data(data, image_folder=str(images))
    assert dataset["images"] == [[str(images / "img0.png")], [str(images / "linked" / "img1.png")]]


def test_collator_refuses_an_escaping_path_of_a_messages_row(tmp_path):
    _, processor = model_and_processor("chatml")
    write_images(tmp_path / "images", 1)
    row = {
        "messages": [{"role": "user", "content": "<image> what ?"}, {"role": "assistant", "content": "two"}],
        "images": ["../images/../../etc/passwd"],
        "sample_index": 4,
    }
    with pytest.raises(SampleError, match="sample 4: image path .* leads outside the image folder"):
        TinyLMMCollator(processor, image_folder=str(tmp_path / "images"))([row])


# -- an edited file is read again -------------------------------------------------------------------------


def _captions(dataset) -> list[str]:
    return [m[1]["content"] for m in dataset["messages"]]


def test_llava_file_edited_in_place_is_read_again_also_in_a_new_process(tmp_path):
    names = write_images(tmp_path, 2)
    data = write_json(tmp_path / "d.json", [_row(names[0], "a red circle ."), _row(names[1])])
    dataset, _ = load_training_data(data)
    assert _captions(dataset)[0] == "a red circle ."
    # Same size, same modification time: only the content says it changed.
    stat = os.stat(data)
    write_json(data, [_row(names[0], "a big circle ."), _row(names[1])])
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(data).st_size == stat.st_size and os.stat(data).st_mtime_ns == stat.st_mtime_ns
    code = (
        "import json, sys; from trainers.data import load_training_data; "
        "rows = load_training_data(sys.argv[1])[0]; print(json.dumps(rows[0]['messages'][1]['content']))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, data], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == "a big circle ."
    assert _captions(load_training_data(data)[0])[0] == "a big circle ."
    # The image folder is part of the key: the same file read against another folder gives other paths.
    other = load_llava(data, image_folder=str(tmp_path / "other"))
    assert other["images"][0] == [str(tmp_path / "other" / names[0])]


# -- clear errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, shown",
    [(5, "the text is int 5"), (["a", "b"], "content part 'a'"), ({"x": 1}, "the text is dict")],
)
def test_non_string_answer_names_the_file_sample_and_turn(tmp_path, answer, shown):
    names = write_images(tmp_path, 2)
    data = write_json(tmp_path / "d.json", [_row(names[0]), _row(names[1], answer)])
    with pytest.raises(SampleError) as err:
        load_training_data(data)
    message = str(err.value)
    assert message.startswith(f"{data}, entry 1: sample 1: turn 1 (assistant): {shown}"), message
    with pytest.raises(SampleError, match=r"^sample 3: turn 1 \(assistant\)"):
        llava_row(_row(names[1], answer), 3)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_non_utf8_data_file_names_the_file(tmp_path, suffix):
    data = tmp_path / f"d{suffix}"
    rows = [_row("a.png", "caf\u00e9")]
    text = json.dumps(rows[0] if suffix == ".jsonl" else rows, ensure_ascii=False)
    data.write_bytes(text.encode("latin-1"))  # what an editor saving in Latin-1 writes
    with pytest.raises(RecordFileError, match=rf"{data.name}: not UTF-8 text .* JSON files must be UTF-8"):
        load_training_data(str(data))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("d.json", "", r"is empty \(0 bytes\)"),
        ("d.json", "[]", "holds no samples"),
        ("d.jsonl", "\n\n", "holds no samples"),
    ],
)
def test_empty_data_file_says_so(tmp_path, name, content, message):
    data = tmp_path / name
    data.write_text(content)
    with pytest.raises(ValueError, match=f"{data.name} {message}"):
        load_training_data(str(data))


def test_jsonl_with_a_bad_line_is_read_by_the_one_reader(tmp_path):
    names = write_images(tmp_path, 1)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(caption_rows(names)[0]) + "\n{not json\n")
    with pytest.raises(RecordFileError, match=r"d\.jsonl, line 2: not valid JSON"):
        load_training_data(str(data))
    with pytest.raises(RecordFileError, match=r"d\.jsonl, line 2: not valid JSON"):
        list(load_training_data(str(data), streaming=True)[0])


def test_every_image_missing_with_skip_missing_images_is_an_error(tmp_path):
    data = write_json(tmp_path / "d.json", caption_rows(["gone0.png", "gone1.png"]))
    with pytest.raises(FileNotFoundError, match="the image files of every sample are missing") as err:
        load_training_data(data, skip_missing_images=True)
    assert "gone0.png" in str(err.value) and "--image_folder" in str(err.value)
