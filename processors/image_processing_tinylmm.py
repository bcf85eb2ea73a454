"""TinyLMMImageProcessor: images and video frames into crops of the vision tower's input size, plus one
layout record per visual input that tells the model how to arrange the crops' features.

Modes (`image_aspect_ratio`): `pad` (expand to a square in the mean colour, then resize), `resize`, `crop`
(shorter side resized, centre square kept: CLIP's image processor, as in transformers' LLaVA-1.5), and
`anyres` / `anyres_max_N` (LLaVA-OneVision: best-fit pinpoint resolution, aspect-preserving resize and
centre pad, row-major crops after a base crop of the whole image resized). In a sample with several
images each image is padded; videos are sampled to at most `video_max_frames` frames, each resized.
"""

from __future__ import annotations

import inspect
import io
import math
import os
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps
from transformers.image_processing_utils import (
    BaseImageProcessor,
    BatchFeature,
    get_patch_output_size,
    select_best_resolution,
)
from transformers.image_transforms import convert_to_rgb, divide_to_patches, to_pil_image
from transformers.image_utils import ChannelDimension, PILImageResampling

if "return_numpy" not in inspect.signature(convert_to_rgb).parameters:
    # transformers < 5.21: convert_to_rgb has no `return_numpy` and drops transparency (hidden colours, often
    # black, show through) where later releases composite it on white; do the same here.
    def convert_to_rgb(image: Image.Image, return_numpy: bool = False):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        image = image.convert("RGB")
        return np.array(image) if return_numpy else image


# Columns of one `image_layout` row; the model's modeling_tinylmm/visual_layout.py holds the same tuple
# and documents each column (the folders ship separately; tests/test_layout.py checks they agree).
LAYOUT_FIELDS = (
    "kind",
    "num_crops",
    "grid_rows",
    "grid_cols",
    "crop_h",
    "crop_w",
    "top",
    "left",
    "height",
    "width",
    "out_h",
    "out_w",
    "newline",
    "num_tokens",
)
IMAGE, ANYRES, VIDEO = 0, 1, 2

_ASPECT_RATIOS = re.compile(r"pad|resize|crop|anyres|anyres_max_(\d+)")


def _record(**fields: int) -> list[int]:
    return [int(fields[name]) for name in LAYOUT_FIELDS]


def _describe(image) -> str:
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    return type(image).__name__


_ORIENTATION = 0x0112  # the EXIF tag saying how a camera held the picture


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a phone photo is stored sideways and marked so)."""
    if image.getexif().get(_ORIENTATION, 1) in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def _to_8_bit(image: Image.Image, what: str) -> Image.Image:
    """16-bit grayscale (`I;16…`, and `I` as older Pillow opens 16-bit PNGs) scaled to 8 bits: PIL's own conversion
    clips every value above 255 to white."""
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    values = np.asarray(image)
    if image.mode == "I":
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"image {what} has 32-bit integer pixels from {low} to {high}; give an 8- or 16-bit image."
            )
        if high <= 255 and image.format != "PNG":  # 8-bit values in a wider type: nothing to scale
            return image
    return Image.fromarray((values.astype(np.float32) / 257.0).round().astype(np.uint8))


def load_image(image) -> Image.Image:
    """An RGB PIL image from a PIL image, an array / tensor (HWC or CHW), a file path, bytes, or a
    `datasets` Image dict ({"bytes": …, "path": …}). Grayscale, palette and RGBA images are converted
    (transparency composited on white), 16-bit grayscale scaled to 8 bits, and a photo turned upright as its
    EXIF orientation says; unreadable input raises an error that names it."""
    what = None
    if isinstance(image, dict):
        if image.get("path") is not None:
            what = _describe(image["path"])
        if image.get("bytes") is not None:
            image = image["bytes"]
        elif image.get("path") is not None:
            image = image["path"]
        else:
            raise ValueError(f"an image dict needs 'bytes' or 'path'; got keys {sorted(image)}.")
    what = what or _describe(image)
    if isinstance(image, (str, os.PathLike)):
        if os.path.isdir(image):
            raise ValueError(f"image path {what} is a directory, not an image file.")
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image file {what} does not exist.")
    # A truncated file is an error even where another library (lmms-eval does, on import) has told PIL to
    # fill in the missing rows with grey.
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    given, loaded = image, False
    try:
        if isinstance(image, (str, os.PathLike)):
            image = Image.open(image)
        elif isinstance(image, (bytes, bytearray)):
            image = Image.open(io.BytesIO(image))
        elif not isinstance(image, Image.Image):
            if not hasattr(image, "shape") or len(image.shape) not in (2, 3):
                raise ValueError(
                    f"unsupported image input {what}: give a PIL image, an (H, W[, C]) array, a path or bytes."
                )
            if 0 in image.shape:
                raise ValueError(f"image {what} has zero size (shape {tuple(image.shape)}).")
            array = np.asarray(image)
            image = to_pil_image(array[..., None] if array.ndim == 2 else array)
        if 0 in image.size:
            raise ValueError(f"image {what} has zero size ({image.width}x{image.height}).")
        image = _to_8_bit(_upright(image), what)
        if image.mode != "RGB":
            image = Image.fromarray(convert_to_rgb(image, return_numpy=True))
        image.load()
        loaded = True
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"image {what} is too large to load safely: {err} If it is meant to be this large, raise PIL's limit "
            "before loading: PIL.Image.MAX_IMAGE_PIXELS = None (no limit) or a larger pixel count."
        ) from err
    except OSError as err:  # PIL's "cannot identify image file", "image file is truncated", …
        raise ValueError(f"image {what} could not be decoded: {err}") from err
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
        if not loaded and image is not given and isinstance(image, Image.Image):
            image.close()  # opened here from a path or bytes: not left open for the garbage collector
    return image


def is_frame(x) -> bool:
    return isinstance(x, Image.Image) or (hasattr(x, "shape") and len(x.shape) in (2, 3))


def is_video(x) -> bool:
    """A video: a list of frames, an array / tensor (T, H, W[, C]) or a file path."""
    if isinstance(x, (str, os.PathLike)):
        return True
    if hasattr(x, "shape"):
        return len(x.shape) == 4
    return isinstance(x, (list, tuple)) and (len(x) == 0 or is_frame(x[0]))


def load_video(video, max_frames: int) -> list[Image.Image]:
    """At most `max_frames` RGB frames sampled uniformly (first and last kept) from a video."""
    if isinstance(video, (str, os.PathLike)):
        video = _decode(video, max_frames)
    frames = list(video)
    if not frames:
        raise ValueError("a video has no frames.")
    keep = _uniform(len(frames), max_frames)
    return [load_image(frames[i]) for i in keep]


def _decode(path, max_frames: int) -> np.ndarray:
    """Uniformly sampled frames (T, H, W, 3) of a video file, decoded by PyAV through transformers."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file {_describe(path)} does not exist.")
    try:
        import av  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"decoding the video file {_describe(path)} needs PyAV: pip install av (or pass decoded frames)."
        ) from err
    from transformers.video_utils import load_video as decode

    def uniform(metadata, **kwargs):
        return _uniform(metadata.total_num_frames, max_frames)

    try:
        frames, _ = decode(os.fspath(path), backend="pyav", sample_indices_fn=uniform)
    except Exception as err:  # the decoder's own error types vary with the container and codec
        raise ValueError(f"video file {_describe(path)} could not be decoded: {err}") from err
    return frames


def _uniform(total: int, most: int) -> np.ndarray:
    if total <= most:
        return np.arange(total)
    return np.linspace(0, total - 1, most).round().astype(int)


class TinyLMMImageProcessor(BaseImageProcessor):
    r"""
    Crops images and video frames for a TinyLMM model and writes the layout record of each.

    Args:
        size (`dict`): crop size `{"height": S, "width": S}`, the vision tower's input size.
        image_mean, image_std (`list[float]`): normalisation; the mean is also the `pad` fill colour.
        resample (`int`): PIL resampling filter.
        image_aspect_ratio (`str`): `pad`, `resize`, `crop`, `anyres` or `anyres_max_N`.
        image_grid_pinpoints (`list`): candidate (height, width) resolutions for AnyRes, multiples of S;
            default (i·S, j·S) for i, j in 1..6 (LLaVA-OneVision).
        crop_tokens (`list[int]`, *optional*): the connector's (rows, cols) token grid for one crop; None
            for a connector that keeps no grid (resampler, qformer, dense_sti: pad / resize images only).
        image_seq_length (`int`): tokens for one crop.
        video_max_frames (`int`): most frames sampled from a video.
        video_pool_stride (`int`): each frame's token grid is pooled bilinearly to ⌈rows/s⌉ × ⌈cols/s⌉.
        connector_type (`str`): the connector's name, for error messages.

    Videos in `pad` / `resize` mode are pooled the same way, without newline (the model has no
    `image_newline` there); in AnyRes modes one newline follows the frames, as in LLaVA-OneVision.
    """

    model_input_names = ["pixel_values", "image_layout"]

    def __init__(
        self,
        size: dict | None = None,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        resample: int = PILImageResampling.BICUBIC,
        image_aspect_ratio: str = "pad",
        image_grid_pinpoints: list | None = None,
        crop_tokens: Sequence[int] | None = None,
        image_seq_length: int | None = None,
        video_max_frames: int = 32,
        video_pool_stride: int = 2,
        connector_type: str = "",
        **kwargs,
    ):
        super().__init__(**kwargs)
        size = dict(size or {"height": 384, "width": 384})
        if size.get("height") != size.get("width") or not size.get("height"):
            raise ValueError(f"size must be a square {{'height': S, 'width': S}}, got {size}.")
        match = _ASPECT_RATIOS.fullmatch(image_aspect_ratio)
        if match is None:
            raise ValueError(
                f"image_aspect_ratio must be pad, resize, crop, anyres or anyres_max_N, got "
                f"{image_aspect_ratio!r}."
            )
        side = size["height"]
        if image_grid_pinpoints is None and image_aspect_ratio.startswith("anyres"):
            image_grid_pinpoints = [[i * side, j * side] for i in range(1, 7) for j in range(1, 7)]
        for point in image_grid_pinpoints or []:
            if len(point) != 2 or point[0] % side or point[1] % side or min(point) <= 0:
                raise ValueError(
                    f"image_grid_pinpoints must be (height, width) multiples of the crop size {side}; got {point}."
                )
        if crop_tokens is None and image_aspect_ratio.startswith("anyres"):
            raise ValueError(
                f"image_aspect_ratio={image_aspect_ratio!r} arranges crop features spatially, but connector "
                f"{connector_type or '(unknown)'} keeps no token grid; use pad or resize."
            )
        if crop_tokens is not None:
            crop_tokens = [int(t) for t in crop_tokens]
        if image_seq_length is None:
            if crop_tokens is None:
                raise ValueError("give image_seq_length for a connector without a token grid.")
            image_seq_length = crop_tokens[0] * crop_tokens[1]
        if video_max_frames < 1 or video_pool_stride < 1:
            raise ValueError("video_max_frames and video_pool_stride must be positive.")
        self.size = size
        self.image_mean = [float(m) for m in image_mean]
        self.image_std = [float(s) for s in image_std]
        self.resample = int(resample)
        self.image_aspect_ratio = image_aspect_ratio
        self.image_grid_pinpoints = [list(p) for p in image_grid_pinpoints] if image_grid_pinpoints else None
        self.crop_tokens = crop_tokens
        self.image_seq_length = int(image_seq_length)
        self.video_max_frames = int(video_max_frames)
        self.video_pool_stride = int(video_pool_stride)
        self.connector_type = connector_type

    # Geometry read from the options.

    @property
    def crop_size(self) -> int:
        return self.size["height"]

    @property
    def anyres(self) -> bool:
        return self.image_aspect_ratio.startswith("anyres")

    @property
    def max_crops(self) -> int | None:
        """N of anyres_max_N: the grid is interpolated down to about N crops' worth of tokens."""
        match = _ASPECT_RATIOS.fullmatch(self.image_aspect_ratio)
        return int(match.group(1)) if match.group(1) else None

    # Pixels.

    def _normalize(self, crops: list[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) crops -> float32 (n, 3, S, S), rescaled and normalised in one pass."""
        x = np.stack(crops).astype(np.float32)
        mean = np.asarray(self.image_mean, np.float32) * 255.0
        scale = 1.0 / (np.asarray(self.image_std, np.float32) * 255.0)
        x -= mean
        x *= scale
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def _resize(self, image: Image.Image, height: int, width: int) -> Image.Image:
        if image.size == (width, height):
            return image
        return image.resize((width, height), resample=self.resample)

    def _pad_to_square(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if w == h:
            return image
        side = max(w, h)
        fill = tuple(int(m * 255) for m in self.image_mean)
        square = Image.new("RGB", (side, side), fill)
        square.paste(image, ((side - w) // 2, (side - h) // 2))
        return square

    def _centre_crop(self, image: Image.Image) -> Image.Image:
        """The shorter side resized to the crop size (the longer one scaled and truncated, as transformers'
        `get_resize_output_image_size` does), then the centre square: CLIPImageProcessor's way."""
        s, (w, h) = self.crop_size, image.size
        new_w, new_h = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        image = self._resize(image, new_h, new_w)
        top, left = (new_h - s) // 2, (new_w - s) // 2
        return image.crop((left, top, left + s, top + s))

    def _single_record(self) -> list[int]:
        newline = int(self.anyres)  # OneVision: one newline after each image of a multi-image sample
        th, tw = self.crop_tokens or (0, 0)
        return _record(
            kind=IMAGE,
            num_crops=1,
            grid_rows=1,
            grid_cols=1,
            crop_h=th,
            crop_w=tw,
            top=0,
            left=0,
            height=th,
            width=tw,
            out_h=th,
            out_w=tw,
            newline=newline,
            num_tokens=self.image_seq_length + newline,
        )

    def image_crops(self, image, single: bool = True) -> tuple[np.ndarray, list[int]]:
        """Crops (n, 3, S, S) of one image and its layout record. `single`: the only image of its sample
        (AnyRes applies); the images of a multi-image sample are padded instead."""
        image = load_image(image)
        s = self.crop_size
        if self.anyres and single:
            return self._anyres_crops(image)
        if self.image_aspect_ratio == "resize":
            crop = self._resize(image, s, s)
        elif self.image_aspect_ratio == "crop":
            crop = self._centre_crop(image)
        else:  # pad, and each image of a multi-image sample
            crop = self._resize(self._pad_to_square(image), s, s)
        return self._normalize([np.asarray(crop)]), self._single_record()

    def _anyres_crops(self, image: Image.Image) -> tuple[np.ndarray, list[int]]:
        s = self.crop_size
        record, (best_h, best_w, new_h, new_w) = self.anyres_record(image.height, image.width)
        canvas = Image.new("RGB", (best_w, best_h), (0, 0, 0))  # OneVision pads with black
        canvas.paste(self._resize(image, new_h, new_w), ((best_w - new_w) // 2, (best_h - new_h) // 2))
        patches = divide_to_patches(np.asarray(canvas).transpose(2, 0, 1), s)
        crops = [np.asarray(self._resize(image, s, s))] + [p.transpose(1, 2, 0) for p in patches]
        return self._normalize(crops), record

    def anyres_record(self, h: int, w: int) -> tuple[list[int], tuple[int, int, int, int]]:
        """The layout record of an h x w image in an AnyRes mode, and (best_h, best_w, new_h, new_w): the
        pinpoint resolution chosen and the size the image is resized to inside it. Needs no pixels, so a
        serving engine can count an image's tokens from its size (`TinyLMMProcessor._get_num_multimodal_tokens`)."""
        s, (th, tw) = self.crop_size, self.crop_tokens
        best_h, best_w = select_best_resolution((h, w), self.image_grid_pinpoints)
        # get_patch_output_size reads only the array's shape; a broadcast view costs no memory.
        shape_only = np.broadcast_to(np.uint8(0), (h, w, 1))
        new_h, new_w = get_patch_output_size(shape_only, (best_h, best_w), ChannelDimension.LAST)
        rows, cols = best_h // s, best_w // s
        top, left, height, width = self._unpadded_window(h, w, rows * th, cols * tw)
        out_h, out_w = height, width
        if self.max_crops is not None:
            ratio = math.sqrt(height * width / (self.max_crops * th * tw))
            if ratio > 1.1:  # OneVision's threshold before interpolating down
                out_h, out_w = max(1, int(height // ratio)), max(1, int(width // ratio))
        record = _record(
            kind=ANYRES,
            num_crops=1 + rows * cols,
            grid_rows=rows,
            grid_cols=cols,
            crop_h=th,
            crop_w=tw,
            top=top,
            left=left,
            height=height,
            width=width,
            out_h=out_h,
            out_w=out_w,
            newline=1,
            num_tokens=th * tw + out_h * (out_w + 1),
        )
        return record, (best_h, best_w, new_h, new_w)

    @staticmethod
    def _unpadded_window(h: int, w: int, grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the token map that the image covers once its centre padding is
        removed (LLaVA-NeXT's unpad); at least one token each way, for extreme aspect ratios."""
        if w / h > grid_w / grid_h:
            new_h = max(1, int(round(h * (grid_w / w), 7)))
            pad = (grid_h - new_h) // 2
            return pad, 0, grid_h - 2 * pad, grid_w
        new_w = max(1, int(round(w * (grid_h / h), 7)))
        pad = (grid_w - new_w) // 2
        return 0, pad, grid_h, grid_w - 2 * pad

    def video_frames(self, video) -> tuple[np.ndarray, list[int]]:
        """Frames (n, 3, S, S) of one video, each resized to the crop size, and its layout record."""
        if self.crop_tokens is None:
            raise ValueError(
                f"videos need a connector that keeps the patch grid (frames are pooled on it); connector "
                f"{self.connector_type or '(unknown)'} does not. Use images, or a spatial connector."
            )
        frames = load_video(video, self.video_max_frames)
        s, (th, tw), stride = self.crop_size, self.crop_tokens, self.video_pool_stride
        crops = [np.asarray(self._resize(f, s, s)) for f in frames]
        out_h, out_w = math.ceil(th / stride), math.ceil(tw / stride)
        newline = int(self.anyres)
        record = _record(
            kind=VIDEO,
            num_crops=len(frames),
            grid_rows=1,
            grid_cols=1,
            crop_h=th,
            crop_w=tw,
            top=0,
            left=0,
            height=th,
            width=tw,
            out_h=out_h,
            out_w=out_w,
            newline=newline,
            num_tokens=len(frames) * out_h * out_w + newline,
        )
        return self._normalize(crops), record

    def __call__(self, images=None, videos=None, **kwargs) -> BatchFeature:
        return self.preprocess(images, videos=videos, **kwargs)

    def preprocess(
        self, images=None, videos=None, return_tensors: str | None = None, **kwargs
    ) -> BatchFeature:
        """`images`: one image, a list (one image per sample) or a list of lists (the images of each
        sample); `videos`: one video or a list of videos. Returns `pixel_values` (all crops, images then
        videos) and `image_layout` (one record per image, then per video)."""
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}.")
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        samples = [list(x) if isinstance(x, (list, tuple)) else [x] for x in images or []]
        if videos is not None and is_video(videos):
            videos = [videos]
        parts = [self.image_crops(img, single=len(sample) == 1) for sample in samples for img in sample]
        parts += [self.video_frames(v) for v in videos or []]
        return self.pack(parts, return_tensors)

    @staticmethod
    def pack(parts: list[tuple[np.ndarray, list[int]]], return_tensors: str | None = None) -> BatchFeature:
        if not parts:
            return BatchFeature({}, tensor_type=return_tensors)
        pixel_values = np.concatenate([p[0] for p in parts])
        layout = np.asarray([p[1] for p in parts], dtype=np.int64)
        return BatchFeature(
            {"pixel_values": pixel_values, "image_layout": layout}, tensor_type=return_tensors
        )


__all__ = ["TinyLMMImageProcessor", "LAYOUT_FIELDS", "load_image", "load_video"]
