"""CondConv layers (``CondConv2d``, ``CondLinear``) and routing (``Router``, ``Routed``)."""

from .cond_conv2d import CondConv2d
from .cond_linear import CondLinear
from .routing import Routed, Router, RoutingState
from .strategy import clear_cache, fixed_forms

__all__ = [
    "CondConv2d",
    "CondLinear",
    "Router",
    "Routed",
    "RoutingState",
    "clear_cache",
    "fixed_forms",
]
