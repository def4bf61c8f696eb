"""cosyfast: CosyVoice2/3's LLM stage (text + voice prompt -> speech tokens), fast and concurrent,
with CosyVoice's exact repetition-aware sampling."""
from ._core import LengthOptions, RequestOptions, SamplingOptions
from .checkpoint import CheckpointError, LlmWeights, load_checkpoint
from .model import Model, load, request_options

__version__ = "0.1.0"
__all__ = [
    "CheckpointError",
    "LengthOptions",
    "LlmWeights",
    "Model",
    "RequestOptions",
    "SamplingOptions",
    "load",
    "load_checkpoint",
    "request_options",
]
