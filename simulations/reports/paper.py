"""Numbers taken from the paper, each with where it comes from (the paper digest's section)."""

from __future__ import annotations

TOY_FRR = {
    "TopK k=20": (1.000, 0.984),
    "TopK k=30": (0.984, 0.242),
    "TopK k=50": (0.945, 0.234),
    "GBA full coverage": (1.000, 1.000),
    "GBA wrong coverage": (0.383, 0.039),
}
"""The imbalanced toy's FRR at tau = 0.8 and 0.9 per method (paper's toy table; digest §5.2)."""

HEAVY_BAND = (1.7, 4.4)
"""The heavy-superposition success band in p/f, read off the paper's heatmap at n = 65,536 (digest §5.1)."""

HEAVY_OPENING = {"n": 65_536, "fails_up_to": 58, "opens_near": 84}
"""Where the paper's heatmap at n = 65,536, p near 2f, fails (FRR ≤ 0.1 up to d = 58) and where its band opens
(d ≈ 84) (digest §5.1)."""

LLM_TARGETS = {"groups": 10, "highest_target": (0.5, 0.1), "lowest_target": 0.001}
"""GBA's targets on LLM activations, which need no feature frequency: K = 10 groups, HTF 0.5 (ICLR
version) or 0.1 (v1), LTF 0.001 (digest §3.5)."""
