"""tinylmm processors: images, AnyRes crops, multi-image and video frames plus chats into model inputs.

Importing this package registers the classes with AutoProcessor / AutoImageProcessor (found by the class
names saved in processor_config.json) and marks them for `register_for_auto_class`, so that
`save_pretrained` writes `auto_map` and copies this code next to the checkpoint.
"""

from transformers import AutoImageProcessor, AutoProcessor

from .chat_templates import (
    CHAT_TEMPLATES,
    END_OF_TURN,
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    end_of_turn_ids,
    guess_template_name,
    resolve_chat_template,
    template_for,
)
from .image_processing_tinylmm import LAYOUT_FIELDS, TinyLMMImageProcessor
from .processing_tinylmm import TinyLMMProcessor

# Keyed by model type name: the config class lives in modeling_tinylmm, which this package never imports.
AutoImageProcessor.register("tinylmm", image_processor_classes={"pil": TinyLMMImageProcessor}, exist_ok=True)
AutoProcessor.register("tinylmm", TinyLMMProcessor, exist_ok=True)
TinyLMMImageProcessor.register_for_auto_class("AutoImageProcessor")
TinyLMMProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "CHAT_TEMPLATES",
    "END_OF_TURN",
    "IMAGE_TOKEN",
    "VIDEO_TOKEN",
    "LAYOUT_FIELDS",
    "TinyLMMImageProcessor",
    "TinyLMMProcessor",
    "end_of_turn_ids",
    "guess_template_name",
    "resolve_chat_template",
    "template_for",
]
