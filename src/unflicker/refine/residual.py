"""Synthetic residual flicker: what the neural filter leaves behind, for training and validating L.

The filter removes most global flicker; what remains is moderate and local: smooth spatial gain
fields, rolling bands, mild tone and colour changes. A draw combines a random subset of these
(unflicker.synth components with random settings) and is resolution independent, so the same draw
flickers a low-resolution crop and a full-resolution frame alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unflicker.synth import Flicker, FlickerConfig


@dataclass
class ResidualFlickerConfig:
    """Ranges the random residual flicker is drawn from."""

    identity_prob: float = 0.08
    """Probability of no flicker at all (L must then leave frames alone)."""
    local_prob: float = 0.85
    """Probability of a smooth spatial gain field."""
    local_strength: tuple[float, float] = (0.3, 1.0)
    """Range of the local field's strength (x synth's local_sigma 0.2 = std of the log gain)."""
    local_grid_max: int = 6
    """Local field grid sides are drawn from 2..local_grid_max nodes."""
    local_colour_prob: float = 0.3
    """Probability that the local field differs per channel."""
    mains_prob: float = 0.3
    """Probability of rolling bands."""
    mains_amplitude: tuple[float, float] = (0.02, 0.1)
    """Range of the bands' relative amplitude."""
    tone_prob: float = 0.25
    """Probability of a mild per-channel tone-curve flicker."""
    tone_strength: tuple[float, float] = (0.2, 0.6)
    """Range of the tone flicker's strength."""
    colour_prob: float = 0.25
    """Probability of a mild global white-balance flicker."""
    colour_strength: tuple[float, float] = (0.2, 0.6)
    """Range of the colour flicker's strength."""


class ResidualFlicker:
    """One random draw of residual flicker; `apply(t, frame)` is deterministic given the draw."""

    def __init__(self, rng: np.random.Generator, config: ResidualFlickerConfig | None = None):
        c = config or ResidualFlickerConfig()
        self.components: list[Flicker] = []
        self.t0 = int(rng.integers(0, 10_000))  # a random phase of the slow drift
        seed = int(rng.integers(0, 2**31))
        if rng.random() < c.identity_prob:
            return
        drift = float(rng.uniform(0.0, 1.0))
        if rng.random() < c.local_prob:
            self.components.append(Flicker(FlickerConfig(
                kind="local", strength=float(rng.uniform(*c.local_strength)), drift_weight=drift,
                local_grid=(int(rng.integers(2, c.local_grid_max + 1)), int(rng.integers(2, c.local_grid_max + 1))),
                local_per_channel=bool(rng.random() < c.local_colour_prob)), seed))
        if rng.random() < c.mains_prob:
            self.components.append(Flicker(FlickerConfig(
                kind="mains", mains_amplitude=float(rng.uniform(*c.mains_amplitude)),
                mains_period=float(rng.uniform(0.15, 0.8)), mains_speed=float(rng.uniform(0.05, 0.45))), seed))
        if rng.random() < c.tone_prob:
            self.components.append(Flicker(FlickerConfig(
                kind="tone", strength=float(rng.uniform(*c.tone_strength)), drift_weight=drift), seed))
        if rng.random() < c.colour_prob:
            self.components.append(Flicker(FlickerConfig(
                kind="colour", strength=float(rng.uniform(*c.colour_strength)), drift_weight=drift), seed))

    def apply(self, t: int, frame: np.ndarray) -> np.ndarray:
        """Flicker frame t: (H, W, 3) float32 in [0, 1] -> new (H, W, 3) float32 in [0, 1]."""
        out = frame.astype(np.float32, copy=True)
        for component in self.components:
            out = component.apply(self.t0 + t, out)
        return out
