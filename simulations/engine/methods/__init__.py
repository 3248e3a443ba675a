"""Training methods: the sparsity mechanism plugged into the one training loop.

One file per method: a frozen config class and the method (the hooks of `base.Method`: where the
codes can be non-zero, their values, a loss term, an update after each step). `METHODS` maps the
names used on the command line and in grid specs to the config classes; adding a method is a new
file here and one line in `METHODS`.
"""

from __future__ import annotations

from simulations.engine.methods.base import Method, MethodConfig
from simulations.engine.methods.batchtopk import BatchTopK, BatchTopKConfig
from simulations.engine.methods.bias_adaptation import BiasAdaptation, BiasAdaptationConfig, BiasController
from simulations.engine.methods.jumprelu import JumpReLU, JumpReLUConfig
from simulations.engine.methods.relu_l1 import ReluL1, ReluL1Config
from simulations.engine.methods.topk import TopK, TopKConfig

METHODS: dict[str, type[MethodConfig]] = {
    "ba": BiasAdaptationConfig,
    "gba": BiasAdaptationConfig,
    "topk": TopKConfig,
    "batchtopk": BatchTopKConfig,
    "relu-l1": ReluL1Config,
    "jumprelu": JumpReLUConfig,
}
"""Method name -> its config class."""

__all__ = [
    "METHODS",
    "Method",
    "MethodConfig",
    "BiasAdaptation",
    "BiasAdaptationConfig",
    "BiasController",
    "TopK",
    "TopKConfig",
    "BatchTopK",
    "BatchTopKConfig",
    "ReluL1",
    "ReluL1Config",
    "JumpReLU",
    "JumpReLUConfig",
]
