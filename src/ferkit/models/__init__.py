"""Models: the MBA-CNN, its ablations and the comparison baselines."""

from .layers import CBAM, DSCCBAM, ChannelAttention, DepthwiseSeparableConv, SpatialAttention
from .mba_cnn import MBACNN
from .registry import create_model, list_models, model_options, model_spec

__all__ = [
    "CBAM",
    "DSCCBAM",
    "MBACNN",
    "ChannelAttention",
    "DepthwiseSeparableConv",
    "SpatialAttention",
    "create_model",
    "list_models",
    "model_options",
    "model_spec",
]
