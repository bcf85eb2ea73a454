"""tinylmm models: any vision encoder + connector + small causal LLM as one PreTrainedModel."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_tinylmm import TinyLMMConfig
from .connectors import CONNECTORS, Connector, register_connector
from .modeling_tinylmm import TinyLMMForConditionalGeneration, TinyLMMModel, TinyLMMPreTrainedModel

AutoConfig.register("tinylmm", TinyLMMConfig, exist_ok=True)
AutoModel.register(TinyLMMConfig, TinyLMMModel, exist_ok=True)
AutoModelForImageTextToText.register(TinyLMMConfig, TinyLMMForConditionalGeneration, exist_ok=True)

__all__ = [
    "CONNECTORS",
    "Connector",
    "TinyLMMConfig",
    "TinyLMMForConditionalGeneration",
    "TinyLMMModel",
    "TinyLMMPreTrainedModel",
    "register_connector",
]
