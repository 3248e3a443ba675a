"""Training methods: the sparsity mechanism plugged into the one training loop.

A method turns the encoder projections into codes (`encode`), may add a penalty on the codes
(`penalty`) and a loss term that needs the projections or the residual (`auxiliary_loss`, e.g.
AuxK), and may update state outside the optimiser after each step (`after_step`, e.g. the bias
controller or BatchTopK's running threshold). Each method has a frozen config class; `METHODS` maps
the names used on the command line and in grid specs to those config classes.
"""

from __future__ import annotations

from simulations.methods.base import Method, MethodConfig
from simulations.methods.batchtopk import BatchTopK, BatchTopKConfig
from simulations.methods.bias_adaptation import BiasAdaptation, BiasAdaptationConfig, BiasController
from simulations.methods.jumprelu import JumpReLU, JumpReLUConfig
from simulations.methods.relu_l1 import ReluL1, ReluL1Config
from simulations.methods.topk import TopK, TopKConfig

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
