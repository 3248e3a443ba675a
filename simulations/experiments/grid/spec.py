"""Grid specs: TOML files of recovery runs (`simulations/specs/*.toml`) and the points they expand to.

A spec (`simulations/specs/*.toml`) names fixed settings, axes (each a list; their cartesian
product), optional variants (tables merged over the fixed settings, for settings that apply to
some points only) and seeds. Every point is one `simulations.experiments.recover.run`; points of
equal shapes may train in stacked groups (`recover.run_stack`, up to `stack` at once).
A finished point is written atomically to `DIR/points/KEY.json`, where KEY hashes the point's
full resolved config, so re-running a spec skips what is done (the runner also checkpoints the
points it trains alone: `simulations.experiments.grid.runner`).

    name = "example"
    description = "what it measures, at which scale"
    seeds = [0, 1]
    [fixed]
    n = 256
    width = "4n"
    [axes]
    d = [24, 48]
    target_frequency = ["1f", "2f"]
    [[variants]]            # optional; each is merged over [fixed]
    learning_rate = 0.003
    [[variants]]
    learning_rate = 0.001
    seeds = [0]             # a variant may run its own seeds
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from simulations.experiments.recover import RecoverConfig
from theory.validation import ConfigError

POINTS = "points"
"""Subdirectory of a grid's output directory holding one JSON file per finished point."""
MANIFEST = "grid.json"
"""The spec and the keys of all its points, written when a run starts (read by `status`)."""


@dataclass(frozen=True)
class GridSpec:
    """A parsed grid spec: settings common to all points, axes, variants and seeds."""

    name: str
    """Short name of the grid (used in tables and figure titles)."""
    description: str = ""
    """What the grid measures and at which scale."""
    seeds: tuple[int, ...] = (0,)
    """Run seeds; every (axes x variants) combination runs once per seed."""
    fixed: dict = field(default_factory=dict)
    """Settings shared by every point (flat keys of `RecoverConfig.from_settings`)."""
    axes: dict = field(default_factory=dict)
    """Setting -> list of values; the grid is their cartesian product."""
    variants: tuple[dict, ...] = ({},)
    """Tables merged over `fixed` (product with the axes); a variant may set its own `seeds` list."""
    conditions_samples: int = 100_000
    """Fresh samples on which each point's identifiability conditions H1-H3 are measured."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name: a grid spec needs a non-empty string name")
        if not self.seeds or not all(isinstance(seed, int) and seed >= 0 for seed in self.seeds):
            raise ConfigError(f"seeds: must be a non-empty list of integers >= 0, got {list(self.seeds)!r}")
        for axis, values in self.axes.items():
            if not isinstance(values, (list, tuple)) or len(values) == 0:
                raise ConfigError(f"axes.{axis}: must be a non-empty list of values, got {values!r}")
        if "seed" in self.fixed or "seed" in self.axes:
            raise ConfigError("seed: give run seeds in the top-level 'seeds' list, not as a setting")
        if not isinstance(self.conditions_samples, int) or self.conditions_samples < 1:
            raise ConfigError(f"conditions_samples: must be an integer >= 1, got {self.conditions_samples!r}")

    @classmethod
    def from_toml(cls, path: str | Path) -> "GridSpec":
        """Read and validate a spec file."""
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"spec: {str(path)!r} is a directory, not a TOML grid spec")
        if not path.is_file():
            raise ConfigError(f"spec: no such file {str(path)!r}")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"spec: {path} is not valid TOML ({error})") from None
        known = {"name", "description", "seeds", "fixed", "axes", "variants", "conditions_samples"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"spec: unknown top-level key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(known))})")
        kinds = {"fixed": dict, "axes": dict, "variants": list, "seeds": list, "description": str}
        for key, kind in kinds.items():
            if key in raw and not isinstance(raw[key], kind):
                form = {dict: "a table ([{key}])", list: "a list", str: "a string"}[kind].format(key=key)
                raise ConfigError(f"spec: {key} must be {form}, got {raw[key]!r}")
        if not all(isinstance(variant, dict) for variant in raw.get("variants", [])):
            raise ConfigError("spec: variants must be a list of tables ([[variants]])")
        return cls(
            name=raw.get("name", ""),
            description=raw.get("description", ""),
            seeds=tuple(raw.get("seeds", [0])),
            fixed=dict(raw.get("fixed", {})),
            axes=dict(raw.get("axes", {})),
            variants=tuple(raw.get("variants", [{}])) or ({},),
            conditions_samples=raw.get("conditions_samples", 100_000),
        )

    def points(self) -> list["GridPoint"]:
        """Every point of the grid, each validated (a bad setting fails here, before any work)."""
        points, seen = [], set()
        names = list(self.axes)
        for variant in self.variants:
            variant = dict(variant)
            seeds = variant.pop("seeds", self.seeds)
            for values in itertools.product(*(self.axes[name] for name in names)):
                for seed in seeds:
                    settings = {**self.fixed, **variant, **dict(zip(names, values)), "seed": seed}
                    try:
                        config = RecoverConfig.from_settings(settings)
                    except (ConfigError, TypeError, ValueError) as error:
                        raise ConfigError(f"spec {self.name!r}, point {settings}: {error}") from None
                    point = GridPoint(settings=settings, config=config)
                    if point.key not in seen:
                        seen.add(point.key)
                        points.append(point)
        return points


@dataclass(frozen=True)
class GridPoint:
    """One run of a grid: the settings as the spec wrote them and the resolved config."""

    settings: dict
    config: RecoverConfig

    @property
    def key(self) -> str:
        """Hash of the full resolved config: equal configs share a key, whichever spec made them."""
        return config_key(self.config)


def config_key(config: RecoverConfig) -> str:
    """First 16 hex digits of the SHA-256 of the config's canonical JSON."""
    canonical = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
