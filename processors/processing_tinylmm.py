"""TinyLMMProcessor: image processor + tokenizer + chat template.

Each `<image>` / `<video>` marker in the text becomes exactly as many placeholder tokens as the model
fills for that input (the count is in the input's layout record), so input_ids stay aligned with the
features token for token. Visual inputs are cropped in the order of their markers in the batch;
`pixel_values` and `image_layout` follow that order.
"""

from __future__ import annotations

import numpy as np
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from .chat_templates import IMAGE_TOKEN, VIDEO_TOKEN, resolve_chat_template
from .image_processing_tinylmm import LAYOUT_FIELDS, TinyLMMImageProcessor, is_frame, is_video

_NUM_TOKENS = LAYOUT_FIELDS.index("num_tokens")

# Keyword arguments of `__call__` that go to the tokenizer (anything else is an error).
_TOKENIZER_KWARGS = {
    "padding",
    "padding_side",
    "truncation",
    "max_length",
    "pad_to_multiple_of",
    "add_special_tokens",
    "return_attention_mask",
    "return_offsets_mapping",
    "return_token_type_ids",
    "return_length",
    "verbose",
}


def _split_images(images, n_text: int) -> tuple[list, list[list] | None]:
    """(all images in order, each sample's images or None): a list of lists is per sample, anything else
    is in marker order across the batch."""
    if images is None:
        return [], None
    if not isinstance(images, (list, tuple)):
        return [images], None
    if images and all(isinstance(x, (list, tuple)) for x in images):
        if len(images) != n_text:
            raise ValueError(f"images are given per sample ({len(images)} lists) for {n_text} texts.")
        return [x for s in images for x in s], [list(s) for s in images]
    if any(isinstance(x, (list, tuple)) for x in images):
        raise ValueError("images mixes lists and single images: give a flat list, or one list per sample.")
    return list(images), None


def _split_videos(videos, n_text: int) -> tuple[list, list[list] | None]:
    """Like `_split_images`; a video itself is a list of frames, an array or a path."""
    if videos is None:
        return [], None
    if isinstance(videos, (list, tuple)) and not videos:
        return [], None
    if is_video(videos):
        return [videos], None
    videos = list(videos)

    def holds_videos(x) -> bool:  # a sample's list of videos, not a video's list of frames
        return isinstance(x, (list, tuple)) and (not x or not is_frame(x[0]))

    if all(holds_videos(x) for x in videos):
        if len(videos) != n_text:
            raise ValueError(f"videos are given per sample ({len(videos)} lists) for {n_text} texts.")
        return [x for s in videos for x in s], [list(s) for s in videos]
    return videos, None


class TinyLMMProcessor(ProcessorMixin):
    r"""
    Turns text with `<image>` / `<video>` markers (or chat conversations) plus images and videos into
    TinyLMM inputs: `input_ids`, `attention_mask`, and, when there are visual inputs, `pixel_values`
    (every crop / frame, in marker order) and `image_layout` (one record per visual input).

    Args:
        image_processor ([`TinyLMMImageProcessor`]): crops images and frames and writes layout records.
        tokenizer ([`PreTrainedTokenizerBase`]): the LLM's tokenizer; it must hold the placeholder tokens.
        chat_template (`str`, *optional*): a Jinja template with {% generation %} markers.
        image_token_id (`int`): placeholder id for image features (the model's `image_token_id`).
        video_token_id (`int`, *optional*): placeholder id for video features; image_token_id when None.
        image_token (`str`): the marker written in text for an image.
        video_token (`str`): the marker written in text for a video.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token_id: int | None = None,
        video_token_id: int | None = None,
        image_token: str = IMAGE_TOKEN,
        video_token: str = VIDEO_TOKEN,
        **kwargs,
    ):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        if image_token_id is None:
            image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_token_id = int(image_token_id)
        self.video_token_id = None if video_token_id is None else int(video_token_id)
        self.image_token = image_token
        self.video_token = video_token
        self._image_placeholder = self._placeholder(self.image_token_id)
        self._video_placeholder = (
            self._image_placeholder if video_token_id is None else self._placeholder(self.video_token_id)
        )

    def _placeholder(self, token_id: int) -> str:
        token = self.tokenizer.convert_ids_to_tokens(token_id)
        if (
            token is None
            or token_id == self.tokenizer.unk_token_id
            or self.tokenizer(token * 3, add_special_tokens=False)["input_ids"] != [token_id] * 3
        ):
            raise ValueError(
                f"placeholder token id {token_id} ({token!r}) is not a single special token of the tokenizer: "
                "the tokenizer does not hold the model's image token. Compose model and processor together "
                "with `trainers.build.compose(vision_model, text_model)` (or `tinylmm build`), which adds "
                "<image> to the tokenizer; or add it yourself with "
                "tokenizer.add_special_tokens({'additional_special_tokens': ['<image>']}) and build the model "
                "with that id as image_token_id."
            )
        return token

    @classmethod
    def from_config(
        cls, model_config, tokenizer, chat_template: str | None = None, **image_processor_kwargs
    ) -> TinyLMMProcessor:
        """The processor that matches a TinyLMMConfig: crop size, normalisation, layout options, the
        connector's token grid and the placeholder ids are read from the config (which is only read,
        so the model code is not needed). `chat_template`: a name from chat_templates.py, a Jinja
        string, or None to guess it from the tokenizer."""
        vision = model_config.vision_config
        backbone = model_config.vision_backbone  # the model's table of backbone facts, normalisation included
        options = dict(
            size={"height": vision.image_size, "width": vision.image_size},
            image_mean=list(backbone.image_mean),
            image_std=list(backbone.image_std),
            image_aspect_ratio=model_config.image_aspect_ratio,
            image_grid_pinpoints=model_config.image_grid_pinpoints,
            crop_tokens=model_config.connector_grid,
            image_seq_length=model_config.image_seq_length,
            video_max_frames=model_config.video_max_frames,
            video_pool_stride=model_config.video_pool_stride,
            connector_type=model_config.connector_type,
        )
        options.update(image_processor_kwargs)
        return cls(
            image_processor=TinyLMMImageProcessor(**options),
            tokenizer=tokenizer,
            chat_template=resolve_chat_template(chat_template, tokenizer),
            image_token_id=model_config.image_token_id,
            video_token_id=model_config.video_token_id,
        )

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_layout"]

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        videos=None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """`text`: a string or a list of strings with `<image>` / `<video>` markers. `images`: a list of
        lists (each sample's images) or a flat list in marker order; `videos` likewise, a video being a
        list of frames, a (T, H, W, C) array or a file path. Padding, truncation and the like go to the
        tokenizer."""
        data, _ = self._encode(images, text, videos, return_tensors=return_tensors, **kwargs)
        return data

    def _encode(
        self, images, text, videos, return_tensors=None, images_kwargs=None, text_kwargs=None, **kwargs
    ):
        """The BatchFeature, and per sample the (old_start, old_end, new_start, new_end) character span
        of every expanded marker."""
        kwargs = {**(text_kwargs or {}), **kwargs}
        # What serving engines (vLLM's transformers backend) ask for: where each marker went, and which tokens
        # are image / video placeholders.
        want_offsets = bool(kwargs.pop("return_text_replacement_offsets", False))
        want_types = bool(kwargs.pop("return_mm_token_type_ids", False))
        unknown = set(kwargs) - _TOKENIZER_KWARGS
        if unknown:
            raise TypeError(f"TinyLMMProcessor got unexpected arguments {sorted(unknown)}.")
        if images_kwargs:
            raise TypeError(
                f"images_kwargs {sorted(images_kwargs)} are not supported; set them on the image processor."
            )
        if text is None:
            raise ValueError("TinyLMMProcessor needs text: visual inputs are placed where their markers are.")
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a string or a list of strings.")

        crops, records, expanded, spans = self._visuals(texts, images, videos)
        text_inputs = self.tokenizer(expanded, **kwargs)
        self._check_placeholders(text_inputs["input_ids"], records)
        data = dict(text_inputs)
        if crops:
            data.update(TinyLMMImageProcessor.pack(list(zip(crops, [r for rs in records for r in rs]))).data)
        if want_types:
            data["mm_token_type_ids"] = self._token_types(data["input_ids"])
        if want_offsets:
            data["text_replacement_offsets"] = [
                [self._offset(text, new, span) for span in sample]
                for text, new, sample in zip(texts, expanded, spans)
            ]
        skip = ["text_replacement_offsets"]
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=skip), spans

    def _offset(self, text: str, expanded: str, span: tuple[int, int, int, int]) -> dict:
        """One expanded marker as transformers' `get_text_with_replacements` describes it."""
        start, end, new_start, new_end = span
        marker = text[start:end]
        return {
            "type": "image" if marker == self.image_token else "video",
            "span": (start, end),
            "new_span": (new_start, new_end),
            "text": marker,
            "replacement": expanded[new_start:new_end],
        }

    def _token_types(self, input_ids) -> list[list[int]]:
        """0 for text, 1 for an image placeholder, 2 for a video placeholder (transformers' numbering)."""
        types = []
        for row in input_ids:
            row = np.asarray(row)
            kind = np.where(row == self.image_token_id, 1, 0)
            if self.video_token_id is not None:
                kind = np.where(row == self.video_token_id, 2, kind)
            types.append(kind.tolist())
        return types

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        """Placeholder tokens and rows of `pixel_values` (crops) of each image, from its (height, width)
        alone, as the only image of its sample: what vLLM asks to plan memory and split batched inputs."""
        from transformers.processing_utils import MultiModalData

        if image_sizes is None:
            return MultiModalData()
        ip = self.image_processor
        records = [
            ip.anyres_record(int(h), int(w))[0] if ip.anyres else ip._single_record() for h, w in image_sizes
        ]
        return MultiModalData(
            num_image_tokens=[r[_NUM_TOKENS] for r in records],
            num_image_patches=[r[LAYOUT_FIELDS.index("num_crops")] for r in records],
        )

    def _visuals(self, texts: list[str], images, videos):
        """Crop every visual input in marker order and expand the markers."""
        flat_images, image_samples = _split_images(images, len(texts))
        flat_videos, video_samples = _split_videos(videos, len(texts))
        markers = [self._markers(t) for t in texts]
        for kind, flat, per_sample, token in (
            ("image", flat_images, image_samples, self.image_token),
            ("video", flat_videos, video_samples, self.video_token),
        ):
            counts = [sum(1 for m in ms if m[0] == kind) for ms in markers]
            if per_sample is not None:
                for i, (c, s) in enumerate(zip(counts, per_sample)):
                    if c != len(s):
                        raise ValueError(
                            f"sample {i} has {c} {token} marker(s) in its text but {len(s)} {kind}(s) were given."
                        )
            elif sum(counts) != len(flat):
                raise ValueError(
                    f"the text holds {sum(counts)} {token} marker(s) (per sample: {counts}) but {len(flat)} "
                    f"{kind}(s) were given."
                )

        image_iter, video_iter = iter(flat_images), iter(flat_videos)
        crops, records, expanded, spans = [], [], [], []
        ip = self.image_processor
        for text, ms in zip(texts, markers):
            n_images = sum(1 for m in ms if m[0] == "image")
            pieces, sample_records, sample_spans, last, shift = [], [], [], 0, 0
            for kind, start, end in ms:
                try:
                    if kind == "image":
                        pixels, record = ip.image_crops(next(image_iter), single=n_images == 1)
                        token = self._image_placeholder
                    else:
                        pixels, record = ip.video_frames(next(video_iter))
                        token = self._video_placeholder
                except (ValueError, FileNotFoundError) as err:
                    raise type(err)(
                        f"sample {len(expanded)}, {kind} {len(sample_records) + 1}: {err}"
                    ) from err
                crops.append(pixels)
                sample_records.append(record)
                replacement = token * record[_NUM_TOKENS]
                pieces += [text[last:start], replacement]
                sample_spans.append((start, end, start + shift, start + shift + len(replacement)))
                shift += len(replacement) - (end - start)
                last = end
            pieces.append(text[last:])
            expanded.append("".join(pieces))
            records.append(sample_records)
            spans.append(sample_spans)
        return crops, records, expanded, spans

    def _markers(self, text: str) -> list[tuple[str, int, int]]:
        """(kind, start, end) of every image / video marker, in order."""
        found = []
        for kind, token in (("image", self.image_token), ("video", self.video_token)):
            start = text.find(token)
            while start != -1:
                found.append((kind, start, start + len(token)))
                start = text.find(token, start + len(token))
        return sorted(found, key=lambda m: m[1])

    def _check_placeholders(self, input_ids, records) -> None:
        """Every sample must hold exactly the placeholders its inputs need: truncation must not cut
        through an image, and the text must not carry raw placeholder tokens of its own."""
        ids = {self.image_token_id, self.video_token_id} - {None}
        for i, (row, sample_records) in enumerate(zip(input_ids, records)):
            row = np.asarray(row)
            found = int(np.isin(row, list(ids)).sum())
            expected = sum(r[_NUM_TOKENS] for r in sample_records)
            if found != expected:
                raise ValueError(
                    f"sample {i} holds {found} placeholder tokens after tokenization but its visual inputs need "
                    f"{expected}: truncation (max_length) cut through them, or the text contains the placeholder "
                    "token itself. Shorten or drop the sample, or raise max_length."
                )

    def apply_chat_template(
        self,
        conversation,
        chat_template: str | None = None,
        tools: list | None = None,
        documents: list | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        return_assistant_tokens_mask: bool = False,
        tokenize: bool = False,
        return_tensors: str | None = None,
        return_dict: bool = False,
        images=None,
        videos=None,
        processor_kwargs: dict | None = None,
        **kwargs,
    ):
        """Render conversation(s) with the chat template and, with `tokenize=True`, process them.

        Messages follow TRL: content is a string or a list of {"type": "image" | "video" | "text"}
        parts. Images / videos come either in the parts ({"type": "image", "image": …}; "path" / "url"
        name a local file) or through `images=` / `videos=` (per conversation, or flat in order).
        With `return_assistant_tokens_mask=True` the result holds `assistant_masks`: 1 on every token of
        each assistant turn, its end-of-turn token included, after the markers are expanded. Other
        keyword arguments go to the tokenizer call (padding, truncation …) or to the template.
        """
        conversations, batched = self._conversations(conversation)
        template = self.chat_template if chat_template is None else chat_template
        if template is None:
            raise ValueError("this processor has no chat template; pass chat_template=.")
        template = resolve_chat_template(template, self.tokenizer)
        call_kwargs = dict(processor_kwargs or {})
        for key in list(kwargs):
            if key in _TOKENIZER_KWARGS or key in ("images_kwargs", "text_kwargs"):
                call_kwargs[key] = kwargs.pop(key)
        images = call_kwargs.pop("images", images)
        videos = call_kwargs.pop("videos", videos)
        if return_assistant_tokens_mask and continue_final_message:
            raise ValueError("continue_final_message cannot be combined with return_assistant_tokens_mask.")
        template_kwargs = {
            **self.tokenizer.special_tokens_map,
            "image_token": self.image_token,
            "video_token": self.video_token,
            **kwargs,
        }
        prompts, generation_spans = render_jinja_template(
            conversations=conversations,
            tools=tools,
            documents=documents,
            chat_template=template,
            return_assistant_tokens_mask=return_assistant_tokens_mask,
            continue_final_message=continue_final_message,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )
        if not tokenize:
            return prompts if batched else prompts[0]

        in_parts = [self._from_parts(c) for c in conversations]
        images = self._pick("image", images, [p[0] for p in in_parts])
        videos = self._pick("video", videos, [p[1] for p in in_parts])
        bos = self.tokenizer.bos_token
        if bos is not None and prompts[0].startswith(bos):  # the template wrote it already
            call_kwargs.setdefault("add_special_tokens", False)
        if return_assistant_tokens_mask:
            call_kwargs["return_offsets_mapping"] = True
        out, spans = self._encode(images, prompts, videos, **call_kwargs)
        if return_assistant_tokens_mask:
            out["assistant_masks"] = self._assistant_masks(out.pop("offset_mapping"), generation_spans, spans)
        out.convert_to_tensors(tensor_type=return_tensors)
        return out if return_dict else out["input_ids"]

    @staticmethod
    def _conversations(conversation) -> tuple[list[list[dict]], bool]:
        if not conversation:
            raise ValueError("apply_chat_template needs at least one message.")
        first = conversation[0]
        if isinstance(first, (list, tuple)):
            return [list(c) for c in conversation], True
        if isinstance(first, dict) and "role" in first:
            return [list(conversation)], False
        raise ValueError("a conversation is a list of {'role': …, 'content': …} messages.")

    @staticmethod
    def _from_parts(conversation: list[dict]) -> tuple[list, list]:
        """Images and videos embedded in a conversation's content parts, in order."""
        images, videos = [], []
        for message in conversation:
            content = message.get("content")
            if isinstance(content, str) or not content:
                continue
            for part in content:
                kind = part.get("type")
                keys = ("image", "path", "url") if kind == "image" else ("video", "path", "url")
                value = next((part[k] for k in keys if part.get(k) is not None), None)
                if kind == "image" and value is not None:
                    images.append(value)
                elif kind == "video" and value is not None:
                    videos.append(value)
        return images, videos

    @staticmethod
    def _pick(kind: str, given, in_parts: list[list]):
        """Visual inputs given as an argument, or else those embedded in the parts (never both)."""
        embedded = any(in_parts)
        if given is not None and embedded:
            raise ValueError(
                f"{kind}s were given both inside the messages' parts and as {kind}s=; give them one way."
            )
        if given is not None:
            return given
        return in_parts if embedded else None

    @staticmethod
    def _assistant_masks(offsets, generation_spans, replacement_spans) -> list[list[int]]:
        """1 on every token overlapping an assistant span; the spans, found in the rendered text, are
        moved past the markers expanded before them."""
        masks = []
        for row, gen, reps in zip(offsets, generation_spans, replacement_spans):
            row = np.asarray(row, dtype=np.int64).reshape(-1, 2)
            starts, ends = row[:, 0], row[:, 1]
            mask = np.zeros(len(row), dtype=np.int64)
            for s, e in gen:
                s += sum(ne - ns - (oe - os_) for os_, oe, ns, ne in reps if oe <= s)
                e += sum(ne - ns - (oe - os_) for os_, oe, ns, ne in reps if oe <= e)
                mask |= (starts < e) & (ends > s) & (ends > starts)
            masks.append(mask.tolist())
        return masks


__all__ = ["TinyLMMProcessor"]
