"""Training methods: the sparsity mechanism plugged into the one training loop.

A method turns the encoder projections into codes (`encode`), may add a penalty to the
reconstruction loss (`penalty`), and may update state outside the optimiser after each step
(`after_step`, e.g. the bias controller). Each method has a frozen config class; `METHODS` maps
the names used on the command line and in grid specs to those config classes.
"""

from __future__ import annotations

from simulations.methods.base import Method, MethodConfig
from simulations.methods.bias_adaptation import BiasAdaptation, BiasAdaptationConfig, BiasController

METHODS: dict[str, type[MethodConfig]] = {
    "ba": BiasAdaptationConfig,
    "gba": BiasAdaptationConfig,
}
"""Method name -> its config class."""

__all__ = ["METHODS", "Method", "MethodConfig", "BiasAdaptation", "BiasAdaptationConfig", "BiasController"]
