"""Bias adaptation (BA) and Group Bias Adaptation (GBA): paper Algorithms 1 and 2.

The neuron biases get no gradient. After every `update_interval` samples each neuron's bias is
moved by Algorithm 2: a neuron that fired more often than its group's target p_k gets
b <- max(b - gamma_minus r_m, -1); one that fired less often than epsilon gets
b <- min(b + gamma_plus r_bar_k, 0); the rest keep their bias. Here r_m is the neuron's largest
positive pre-activation in the window and r_bar_k the mean of r_m over the group's neurons with
r_m > 0. The min/max follow the clamp b in [-1, 0] (the printed v1 figure has "max" in the second
rule, which would let b leave the clamp; digest §3.3).

The controller keeps three running statistics per neuron (a count of positive pre-activations,
a running maximum, and the number of samples seen) instead of the algorithm's buffers of M x B
pre-activations; the result is the same (tests/test_bias_adaptation.py proves it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from simulations.engine.methods.base import Codes, FrequencyTargets, Method, MethodConfig, Projections
from theory.validation import ConfigError, check_choice, check_int, check_real, multiple_setting


DEFAULT_TARGETS = {
    "ba": {"target_frequency": "2f"},
    "gba": {"groups": 10, "highest_target": "4f", "lowest_target": "0.25f"},
}
"""BA's and GBA's targets where a setting leaves them out, as multiples of the feature frequency f:
the one source of these defaults for the CLI, grid specs and `RecoverConfig`."""

TARGETS_WITHOUT_F = {"groups": 10, "highest_target": 0.1, "lowest_target": 0.001}
"""GBA's targets where f is unknown (activations of a real model): the paper's LLM defaults,
K = 10 geometric targets from HTF 0.1 to LTF 0.001 (v1 of the paper; digest §3.5)."""


CALIBRATED = "calibrated"
"""`initial_bias` that sets each neuron's starting bias from the first batch (`BiasAdaptation.calibrate`)."""

CONTROLLERS = ("paper", "excess", "proportional")
"""The bias-update rules (`BiasAdaptationConfig.controller`)."""


@dataclass(frozen=True)
class BiasAdaptationConfig(MethodConfig):
    """Groups with geometric target frequencies and the bias-update rule (Algorithm 2)."""

    tied_default: ClassVar[bool] = True
    """The paper trains BA/GBA on a tied SAE."""

    highest_target: float = 0.02
    """Target activation frequency p_1 of the first group (HTF); BA's single target p."""
    lowest_target: float | None = None
    """Target of the last group (LTF); None means equal to `highest_target` (BA)."""
    groups: int = 1
    """Number of neuron groups K; targets run geometrically from HTF to LTF. K = 1 is BA."""
    bias_decrease_rate: float = 0.1
    """gamma_minus: a too-frequent neuron's bias drops by gamma_minus times its largest pre-activation."""
    bias_increase_rate: float = 0.1
    """gamma_plus: a dead neuron's bias rises by gamma_plus times its group's mean largest pre-activation."""
    dead_frequency: float = 1e-6
    """epsilon: a neuron firing less often than this in a window counts as dead."""
    update_interval: int | None = None
    """Samples between bias updates (the buffer size B); None = max(8192, 20 / lowest target)."""
    activation: str = "jumprelu"
    """'jumprelu': z = w.(x - b_pre) when y > 0 (the bias only gates; the paper's LLM choice), or 'relu': z = max(y, 0)."""
    initial_bias: float | str = 0.0
    """Starting bias of every neuron, in [-1, 0] (the paper starts at 0: the first steps are dense until
    the controller has lowered the biases), or 'calibrated': each neuron starts at the bias that makes
    it fire on a fraction of the first batch equal to its group's target (minus that quantile of its
    projections, clamped to [-1, 0]), so training is sparse from the first step."""
    controller: str = "paper"
    """'paper': Algorithm 2 as written (a too-frequent neuron's bias drops by gamma_minus r_m, only a dead
    one's rises), so a neuron may settle anywhere between epsilon and its target. 'excess': Algorithm 2
    with the drop scaled by the relative excess e = (q - p) / q, so a neuron just above its target takes a
    small step instead of overshooting far below it; targets stay ceilings. 'proportional': both
    moves scaled by the relative frequency error e = (q - p) / max(q, p), and a neuron firing below its
    target (not only a dead one) rises by gamma_plus |e| r_m, so frequencies land on their targets."""

    def __post_init__(self):
        check_real("highest_target (p)", self.highest_target, 0.0, 1.0, low_open=True, high_open=True)
        check_int("groups", self.groups, 1)
        if self.lowest_target is not None:
            check_real("lowest_target (LTF)", self.lowest_target, 0.0, 1.0, low_open=True, high_open=True)
            if self.groups > 1 and self.lowest_target >= self.highest_target:
                raise ConfigError(
                    f"lowest_target (LTF): must lie in (0, highest_target = {self.highest_target:g}) "
                    f"when groups > 1, got {self.lowest_target!r}"
                )
            if self.groups == 1 and self.lowest_target != self.highest_target:
                raise ConfigError("lowest_target: with one group it must equal highest_target (or be None)")
        check_real("bias_decrease_rate (gamma_minus)", self.bias_decrease_rate, 0.0, 1.0, low_open=True)
        check_real("bias_increase_rate (gamma_plus)", self.bias_increase_rate, 0.0, 1.0, low_open=True)
        if self.dead_frequency >= self.targets().min() and self.dead_frequency == type(self).dead_frequency:
            raise ConfigError(
                f"dead_frequency (epsilon): the default {self.dead_frequency:g} is not below the lowest target "
                f"{self.targets().min():g}; set dead_frequency below it"
            )
        check_real("dead_frequency (epsilon)", self.dead_frequency, 0.0, self.targets().min(), high_open=True)
        if self.update_interval is not None:
            check_int("update_interval", self.update_interval, 1)
        check_choice("activation", self.activation, ("jumprelu", "relu"))
        if self.initial_bias != CALIBRATED:
            if isinstance(self.initial_bias, str):
                raise ConfigError(f"initial_bias: must be a number in [-1, 0] or {CALIBRATED!r}, got {self.initial_bias!r}")
            check_real("initial_bias", self.initial_bias, -1.0, 0.0)
        check_choice("controller", self.controller, CONTROLLERS)

    @classmethod
    def single(cls, target: float, **settings) -> "BiasAdaptationConfig":
        """BA: one group with target p."""
        return cls(highest_target=target, lowest_target=target, groups=1, **settings)

    def targets(self) -> np.ndarray:
        """p_k = HTF (LTF/HTF)^((k-1)/(K-1)), k = 1..K (paper §3.4)."""
        lowest = self.highest_target if self.lowest_target is None else self.lowest_target
        return np.geomspace(self.highest_target, lowest, self.groups)

    def resolved_update_interval(self) -> int:
        """Samples per bias update: enough to see the rarest target ~20 times."""
        if self.update_interval is not None:
            return self.update_interval
        return int(max(8192, np.ceil(20.0 / self.targets().min())))

    def check(self, method: str, width: int) -> None:
        if method == "ba" and self.groups != 1:
            raise ConfigError(f"groups: method 'ba' has exactly 1 group, got {self.groups}")
        if width < self.groups:
            raise ConfigError(f"groups: must be at most the width ({width}), got {self.groups}")

    @classmethod
    def setting_names(cls) -> set[str]:
        return super().setting_names() | {"target_frequency"}

    @classmethod
    def from_settings(cls, settings: dict, feature_frequency: float, method: str) -> "BiasAdaptationConfig":
        """`target_frequency` sets BA's single target; frequencies may be multiples of f written '2f'.
        Targets left out come from `DEFAULT_TARGETS[method]` (for BA, only when no target is given)."""
        given = dict(settings)
        if method == "gba":
            settings = {**DEFAULT_TARGETS["gba"], **given}
        elif not {"target_frequency", "highest_target", "lowest_target"} & set(given):
            settings = {**given, **DEFAULT_TARGETS["ba"]}
        for key in ("target_frequency", "highest_target", "lowest_target"):
            if isinstance(settings.get(key), str):
                settings[key] = frequency_setting(settings[key], feature_frequency, key, default=key not in given)
        if "target_frequency" in settings:
            both = sorted({"highest_target", "lowest_target"} & set(settings))
            if both:
                raise ConfigError(f"{both[0]}: give either target_frequency or highest_target/lowest_target, not both")
            groups = settings.pop("groups", 1)
            if groups != 1:
                owner = "method 'ba' has" if method == "ba" else "a single target_frequency means"
                raise ConfigError(f"groups: {owner} exactly 1 group, got {groups!r}")
            return cls.single(settings.pop("target_frequency"), **settings)
        return cls(**settings)

    def build(self, width: int, device="cpu") -> "BiasAdaptation":
        self.check("gba", width)
        return BiasAdaptation(self, width, device)


def frequency_setting(text: str, feature_frequency: float, name: str, default: bool = False) -> float:
    """'2f' -> 2 * f; a plain number string -> that number. A frequency outside (0, 1) is an error that
    shows how it was derived (f = E[s]/n), and says so when the setting was a default."""
    value = multiple_setting(text, name, "f", feature_frequency, "2f", "a number in (0, 1)")
    if not 0 < value < 1:
        if not str(text).strip().endswith("f"):
            raise ConfigError(f"{name}: must lie in (0, 1), got {text}")
        origin = f"{text} (the default) is" if default else f"{text} is"
        hint = f"; set {name} yourself" if default else ""
        raise ConfigError(f"{name}: {origin} {value:g} with f = E[s]/n = {feature_frequency:g}, outside (0, 1){hint}")
    return value


def group_assignment(width: int, groups: int) -> np.ndarray:
    """Group index of each neuron: K contiguous blocks of (nearly) equal size."""
    return np.repeat(np.arange(groups), [len(block) for block in np.array_split(np.arange(width), groups)])


class BiasController:
    """Algorithm 2 (or its proportional variant) on running statistics: O(M) memory, one update every
    `update_interval` samples."""

    def __init__(self, config: BiasAdaptationConfig, group_of_neuron: torch.Tensor):
        self.config = config
        self.group_of_neuron = group_of_neuron
        self.groups = config.groups
        device = group_of_neuron.device
        self.neuron_targets = torch.as_tensor(config.targets(), dtype=torch.float32, device=device)[group_of_neuron]
        self.interval = config.resolved_update_interval()
        width = group_of_neuron.numel()
        self.positive_counts = torch.zeros(width, dtype=torch.int64, device=device)
        self.largest = torch.full((width,), -torch.inf, device=device)
        self.samples = 0
        self.updates = 0

    def observe(self, pre_activation: torch.Tensor, bias: torch.Tensor) -> bool:
        """Algorithm 2 as written: add a batch of pre-activations y (batch, width), update `bias` in
        place when a window is full. The method feeds `record` from the support instead."""
        self.record((pre_activation > 0).sum(dim=0), pre_activation.amax(dim=0), pre_activation.shape[0])
        return self.update_if_due(bias)

    def record(self, positive_counts: torch.Tensor, largest: torch.Tensor, samples: int) -> None:
        """Add one batch's statistics: positive pre-activations per neuron, their maximum, the batch size."""
        self.positive_counts += positive_counts
        torch.maximum(self.largest, largest, out=self.largest)
        self.samples += samples

    def update_if_due(self, bias: torch.Tensor) -> bool:
        """Algorithm 2 on `bias` (in place) when the window holds `update_interval` samples."""
        if self.samples < self.interval:
            return False
        self.update(bias)
        return True

    def frequencies(self) -> torch.Tensor:
        """Activation frequency q_m of each neuron in the current window."""
        return self.positive_counts.float() / max(self.samples, 1)

    @torch.no_grad()
    def update(self, bias: torch.Tensor) -> None:
        """Algorithm 2, then start a new window."""
        config = self.config
        frequency = self.frequencies()
        peak = self.largest.clamp_min(0.0)
        active = (peak > 0).float()
        peak_sum = torch.zeros(self.groups, device=bias.device).index_add_(0, self.group_of_neuron, peak)
        active_count = torch.zeros(self.groups, device=bias.device).index_add_(0, self.group_of_neuron, active)
        # A group with no active neuron has no r_bar; 1 is the largest pre-activation unit inputs allow.
        group_peak = torch.where(active_count > 0, peak_sum / active_count.clamp_min(1), torch.ones_like(peak_sum))
        too_frequent = frequency > self.neuron_targets
        dead = frequency < config.dead_frequency
        raised = (bias + config.bias_increase_rate * group_peak[self.group_of_neuron]).clamp_max(0.0)
        # Relative error (q - p) / max(q, p): in (0, 1] above the target, in [-1, 0) below it.
        error = (frequency - self.neuron_targets) / torch.maximum(frequency, self.neuron_targets)
        if config.controller in ("paper", "excess"):
            step = peak if config.controller == "paper" else error * peak
            lowered = (bias - config.bias_decrease_rate * step).clamp_min(-1.0)
            bias.copy_(torch.where(too_frequent, lowered, torch.where(dead, raised, bias)))
        else:
            lowered = (bias - config.bias_decrease_rate * error * peak).clamp_min(-1.0)
            below = torch.where(dead, raised, (bias - config.bias_increase_rate * error * peak).clamp_max(0.0))
            bias.copy_(torch.where(too_frequent, lowered, below))
        self.positive_counts.zero_()
        self.largest.fill_(-torch.inf)
        self.samples = 0
        self.updates += 1

    def state_dict(self) -> dict:
        return {
            "positive_counts": self.positive_counts.clone(),
            "largest": self.largest.clone(),
            "samples": self.samples,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.positive_counts.copy_(state["positive_counts"])
        self.largest.copy_(state["largest"])
        self.samples = int(state["samples"])
        self.updates = int(state["updates"])


class BiasAdaptation(Method):
    """BA/GBA: a gate y = projection + b with b set by the controller, never by the optimiser."""

    def __init__(self, config: BiasAdaptationConfig, width: int, device="cpu"):
        super().__init__()
        self.config = config
        groups = torch.as_tensor(group_assignment(width, config.groups), device=device)
        start = 0.0 if config.initial_bias == CALIBRATED else float(config.initial_bias)
        self.register_buffer("bias", torch.full((width,), start, device=device))
        self.register_buffer("groups", groups)
        self.controller = BiasController(config, groups)

    def cutoff(self) -> torch.Tensor:
        # p > -b is exactly p + b > 0 in floating point (a rounded sum is zero only when the exact one is).
        return -self.bias

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        if self.config.activation == "relu":
            return projection_values + self.bias[columns]
        return projection_values

    @torch.no_grad()
    def update(self, codes: Codes) -> None:
        # Algorithm 2 reads each neuron's largest pre-activation only where it is positive, i.e. the
        # largest over its active entries: O(nnz) work, and the same biases as a pass over the
        # whole (batch, width) matrix.
        width = self.bias.numel()
        positive = codes.projections + self.bias[codes.columns]
        largest = torch.zeros(width, device=self.bias.device).scatter_reduce_(0, codes.columns, positive, "amax")
        self.controller.record(torch.bincount(codes.columns, minlength=width), largest, codes.batch_size)
        self.controller.update_if_due(self.bias)

    @torch.no_grad()
    def calibrate(self, projections: Projections) -> float | None:
        if self.config.initial_bias != CALIBRATED:
            return None
        targets = torch.as_tensor(self.config.targets(), dtype=torch.float32, device=self.bias.device)[self.groups]
        # A neuron fires where projection > -b: -b at the (1 - target) quantile fires on `target` of the batch.
        rows = projections.batch_size
        # The value at ascending rank (1 - target)(rows - 1) is the one at descending rank `from_top`:
        # a partial top-k of a few rows instead of a sort of all of them.
        from_top = (rows - 1) - ((1.0 - targets) * (rows - 1)).round().long()
        active = 0
        for start, block in projections.neuron_blocks():
            neurons = slice(start, start + block.shape[0])
            depth = from_top[neurons]
            largest = block.float().topk(int(depth.max()) + 1, dim=1).values
            cutoff = largest.gather(1, depth.unsqueeze(1)).squeeze(1)
            self.bias[neurons] = (-cutoff).clamp(-1.0, 0.0)
            active += int(torch.count_nonzero(block > self.cutoff()[neurons].unsqueeze(1)))
        return active / (rows * projections.width)

    def frequency_targets(self) -> FrequencyTargets:
        targets = torch.as_tensor(self.config.targets(), dtype=torch.float32)
        in_range = bool(((self.bias >= -1.0) & (self.bias <= 0.0)).all())
        return FrequencyTargets(self.groups, targets, adjustable=self.bias > -1.0, in_range=in_range, updates=self.controller.updates)

    def get_extra_state(self) -> dict:
        """The controller's window statistics go into `state_dict`, so a resumed run continues the same window."""
        return self.controller.state_dict()

    def set_extra_state(self, state: dict) -> None:
        self.controller.load_state_dict(state)

    def export(self) -> dict[str, torch.Tensor]:
        if self.config.activation == "relu":
            return {"b_enc": self.bias.clone(), "threshold": torch.zeros_like(self.bias)}
        return {"b_enc": torch.zeros_like(self.bias), "threshold": -self.bias.clone()}
