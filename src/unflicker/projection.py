"""Projection onto a flicker model: keep the input's pixels, take only a smooth correction from the network.

The filter and refinement output O_t has the atlas's consistent look, but where the atlas is
structurally flawed (moving objects, clip ends) it also carries wrong local colours and loses
some detail. Physical flicker (exposure, white balance, tone, uneven or rolling-shutter light)
is a smooth function of position and intensity, so `FlickerModel.fit` finds, per channel, the
correction of that form that best maps I_t onto O_t, fitted robustly (flaws are outliers), and
`apply` applies it to the full-resolution I_t. Per channel c, with I = I_t[..., c]:

    P = I * (G(y, x) + R(y)) + T(I)

G: a coarse bilinear gain grid (uneven light), R: per-row gain (mains light under a rolling
shutter), T: a piecewise-linear tone term (gamma, contrast, offset). A ridge term pulls the
model towards the identity (G = 1, R = 0, T = 0) where the data say little.

Some flicker is not smooth: a per-frame dehazing, for one, changes its haze estimate with the
scene's depth. What the model leaves of the network's correction, O_t - P, is therefore added
back where it is small (weight exp(-(r / residual_tolerance)^2) per pixel): small differences are
such flicker, large ones are the atlas's flaws and stay out. With `residual_blur`, that remainder is
low-passed first, so the networks' softening of fine texture does not come with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from unflicker.errors import InputError
from unflicker.frames import float_rgb, planes as frame_planes, row_bands


@dataclass
class ProjectionConfig:
    """Size of the flicker model and of its fit."""

    grid: tuple[int, int] = (4, 5)
    """(rows, cols) of the gain grid's nodes."""
    rows: int = 24
    """Nodes of the per-row gain across the frame height; 0 leaves it out."""
    tone_knots: int = 6
    """Knots of the tone term over [0, 1]."""
    fit_side: int = 160
    """Longer side, in pixels, of the copies the model is fitted on."""
    ridge: float = 5e-3
    """Pull of the spatial parts (gain grid about its mean, row gains) towards the identity,
    relative to the mean squared signal of the fit: larger keeps more of the input's own look."""
    global_ridge: float = 1e-3
    """The same for the frame-wide parts (mean gain, tone term), which flaws barely bias."""
    iterations: int = 3
    """Reweighting rounds of the robust (Huber) fit; 1 is plain least squares."""
    residual_tolerance: float = 0.03
    """Size, in [0, 1] intensity units, of the differences between the network's output and the
    fitted model that are kept (weight 1/e at this size, fading fast above); 0 keeps the model alone."""
    residual_blur: float = 0.0
    """Gaussian sigma, as a fraction of the frame's longer side, of a low-pass applied to the kept
    differences before they are added: the network's output is softer than the input, and added
    pixel by pixel its small differences take low-contrast texture with them. 0: pixel by pixel."""

    def check(self) -> None:
        """Raise InputError on an invalid setting."""
        if len(self.grid) != 2 or min(self.grid) < 1 or self.rows < 0 or self.tone_knots < 2:
            raise InputError("projection grid must be >= (1, 1), rows >= 0 and tone_knots >= 2")
        if self.fit_side < 8 or min(self.ridge, self.global_ridge) < 0 or self.iterations < 1:
            raise InputError("projection fit_side must be >= 8, ridge >= 0 and iterations >= 1")
        if not self.residual_tolerance >= 0:
            raise InputError(f"projection residual_tolerance must be >= 0, got {self.residual_tolerance}")
        if not 0 <= self.residual_blur < 1:
            raise InputError(f"projection residual_blur must be in [0, 1), got {self.residual_blur}")


_LUT_LEVELS = np.linspace(0.0, 1.0, 4096)
_FIT_BLUR = 2.0  # Gaussian sigma, in full-resolution pixels, of both copies the model is fitted on


def hat_basis(x: np.ndarray, knots: int) -> np.ndarray:
    """(..., knots) piecewise-linear interpolation weights of x in [0, 1] over evenly spaced knots."""
    if knots == 1:
        return np.ones(np.shape(x) + (1,), np.float32)
    pos = np.clip(x, 0.0, 1.0) * (knots - 1)
    lower = np.minimum(np.floor(pos).astype(np.int64), knots - 2)
    frac = (pos - lower).astype(np.float32)
    weights = np.zeros(np.shape(x) + (knots,), np.float32)
    np.put_along_axis(weights, lower[..., None], (1 - frac)[..., None], -1)
    np.put_along_axis(weights, lower[..., None] + 1, frac[..., None], -1)
    return weights


def _axis(n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.float32) + 0.5) / n


@dataclass
class FlickerCorrection:
    """A fitted correction: per channel, the gain grid, row gains and tone term at its knots."""

    gain: np.ndarray
    """(3, grid rows, grid cols)"""
    row_gain: np.ndarray
    """(3, rows)"""
    tone: np.ndarray
    """(3, tone knots)"""

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """The corrected (H, W, 3) float32 frame, clipped to [0, 1]."""
        frame = float_rgb(frame)
        h, w = frame.shape[:2]
        by, bx = hat_basis(_axis(h), self.gain.shape[1]), hat_basis(_axis(w), self.gain.shape[2])
        by_rows = hat_basis(_axis(h), self.row_gain.shape[1]) if self.row_gain.shape[1] else None
        # The tone term tabulated finely: a table lookup is several times faster than np.interp.
        tone_tables = np.stack([np.interp(_LUT_LEVELS, np.linspace(0.0, 1.0, self.tone.shape[1]), t)
                                for t in self.tone]).astype(np.float32)
        planes = frame_planes(frame)  # contiguous planes: faster than strided channels
        bands = row_bands(h, w)  # each band's steps in cache: 1.4x faster at 1080p, the same values
        scratch = np.empty((bands[0].stop, w), np.float32)
        index = np.empty((bands[0].stop, w), np.intp)  # the lookup's own index type: no converted copy
        out = []
        for c in range(3):
            gain = by @ self.gain[c] @ bx.T  # separable: bilinear upsampling of the grid
            rows = None if by_rows is None else (by_rows @ self.row_gain[c])[:, None]
            for band in bands:
                g, channel = gain[band], planes[c][band]
                s, i = scratch[: len(g)], index[: len(g)]
                if rows is not None:
                    g += rows[band]
                np.clip(channel, 0.0, 1.0, out=s)
                s *= len(_LUT_LEVELS) - 1
                s += 0.5
                np.copyto(i, s, casting="unsafe")  # truncation, as astype: the nearest level
                g *= channel
                g += np.take(tone_tables[c], i, out=s)
                np.clip(g, 0.0, 1.0, out=g)
            out.append(gain)
        return cv2.merge(out)


def low_pass(image: np.ndarray, sigma: float) -> np.ndarray:
    """`image` (H, W, C) blurred by a Gaussian of `sigma` times its longer side (0: unchanged).
    Blurred at a reduced size where the blur allows it (area down, bilinear up): the same low
    pass at a fraction of the cost at 1080p and above."""
    if sigma <= 0:
        return image
    h, w = image.shape[:2]
    pixels = sigma * max(h, w)
    factor = max(1.0, pixels / 2.0)  # keep at least 2 small pixels per sigma
    small = image
    if factor > 1.5:
        small = cv2.resize(image, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
        pixels = pixels * small.shape[1] / w
    small = cv2.GaussianBlur(small, (0, 0), pixels, borderType=cv2.BORDER_REFLECT)
    if small.shape[:2] != (h, w):
        small = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return small


class FlickerModel:
    """Fits `FlickerCorrection`s that map an input frame onto a deflickered one."""

    def __init__(self, config: ProjectionConfig | None = None):
        self.config = config or ProjectionConfig()
        self.config.check()
        self._bases: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        # Identity in this parameterisation: gains 1 on the grid, 0 elsewhere.
        cfg = self.config
        n_grid = cfg.grid[0] * cfg.grid[1]
        self._identity = np.concatenate([np.ones(n_grid), np.zeros(cfg.rows + cfg.tone_knots)])
        self._penalty = self._penalty_matrix(n_grid)

    def _small(self, image: np.ndarray) -> np.ndarray:
        """A low-pass copy at the fit size: the network's output can be softer than the input, and
        detail missing from the target would pull the fitted gains towards the mean."""
        h, w = image.shape[:2]
        scale = min(1.0, self.config.fit_side / max(h, w))
        if scale < 1:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # Area averaging already makes both copies equally soft when it shrinks them several-fold
        # (a further blur there mixes intensities and weakens the fit: bike-packing E_warp 0.74 -> 0.84).
        sigma = _FIT_BLUR * scale
        return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) if sigma >= 0.6 else image

    def _spatial_bases(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float64 hat bases of the gain grid's rows (h, grid rows) and columns (w, grid cols) and of
        the row gains (h, rows), cached per size: the gain grid's weight at pixel (y, x) is
        rows[y, a] cols[x, b] (separable), the row gains' rows_gain[y, i]."""
        if (h, w) not in self._bases:
            gy, gx = self.config.grid
            rows = hat_basis(_axis(h), self.config.rows) if self.config.rows else np.zeros((h, 0), np.float32)
            self._bases[(h, w)] = tuple(b.astype(np.float64) for b in (hat_basis(_axis(h), gy),
                                                                       hat_basis(_axis(w), gx), rows))
        return self._bases[(h, w)]

    def _normal_equations(self, x: np.ndarray, target: np.ndarray, tone: np.ndarray, weights: np.ndarray,
                          bases: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """D^T W D and D^T W y of the weighted least squares for one channel (all (h, w) float64 but tone,
        (h, w, knots)), D's columns the gain grid (x times its separable weights), the row gains (x times
        theirs) and the tone term. Summed along the bases' separable structure instead of through the
        dense (pixels x parameters) design: the same sums, about a tenth of the products."""
        by, bx, br = bases
        h, w = x.shape
        gy, gx, knots = by.shape[1], bx.shape[1], tone.shape[2]
        u = weights * x
        v = u * x
        z = u[..., None] * tone  # (h, w, knots)
        q = v @ (bx[:, :, None] * bx[:, None, :]).reshape(w, gx * gx)  # per row: sum_x v bx_b bx_d
        grid_grid = np.tensordot(by[:, :, None] * by[:, None, :], q.reshape(h, gx, gx), axes=(0, 0))
        grid_grid = grid_grid.transpose(0, 2, 1, 3).reshape(gy * gx, gy * gx)
        grid_rows = np.tensordot(by[:, :, None] * (v @ bx)[:, None, :], br, axes=(0, 0)).reshape(gy * gx, -1)
        rows_rows = br.T @ (v.sum(1)[:, None] * br)
        grid_tone = np.tensordot(by, np.tensordot(z, bx, axes=(1, 0)), axes=(0, 0))  # (gy, knots, gx)
        grid_tone = grid_tone.transpose(0, 2, 1).reshape(gy * gx, knots)
        rows_tone = br.T @ z.sum(1)
        flat = tone.reshape(-1, knots)
        tone_tone = (flat * weights.reshape(-1, 1)).T @ flat
        normal = np.block([[grid_grid, grid_rows, grid_tone],
                           [grid_rows.T, rows_rows, rows_tone],
                           [grid_tone.T, rows_tone.T, tone_tone]])
        wy = weights * target
        xwy = x * wy
        rhs = np.concatenate([(by.T @ xwy @ bx).reshape(-1), br.T @ xwy.sum(1), flat.T @ wy.reshape(-1)])
        return normal, rhs

    @staticmethod
    def _model(x: np.ndarray, tone: np.ndarray, theta: np.ndarray,
               bases: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """D theta for one channel: x (G + R) + T(x), (h, w) float64."""
        by, bx, br = bases
        n_grid, n_rows = by.shape[1] * bx.shape[1], br.shape[1]
        gain = by @ theta[:n_grid].reshape(by.shape[1], bx.shape[1]) @ bx.T
        gain += (br @ theta[n_grid:n_grid + n_rows])[:, None]
        return x * gain + tone @ theta[n_grid + n_rows:]

    def _penalty_matrix(self, n_grid: int) -> np.ndarray:
        """Quadratic penalty on (parameters - identity): spatial variation costs more than level."""
        cfg = self.config
        mean = np.full((n_grid, n_grid), 1.0 / n_grid)
        grid = cfg.ridge * (np.eye(n_grid) - mean) + cfg.global_ridge * mean
        rest = np.concatenate([np.full(cfg.rows, cfg.ridge), np.full(cfg.tone_knots, cfg.global_ridge)])
        penalty = np.zeros((n_grid + len(rest),) * 2)
        penalty[:n_grid, :n_grid] = grid
        penalty[n_grid:, n_grid:] = np.diag(rest)
        return penalty

    def fit(self, frame: np.ndarray, target: np.ndarray) -> FlickerCorrection:
        """The correction of the model's form that best maps `frame` onto `target` (both (H, W, 3))."""
        frame, target = float_rgb(frame), float_rgb(target)
        if frame.shape != target.shape:
            raise InputError(f"frame is {frame.shape}, target is {target.shape}")
        small, small_target = self._small(frame), self._small(target)
        h, w = small.shape[:2]
        bases = self._spatial_bases(h, w)
        cfg = self.config
        n_grid, n_rows = cfg.grid[0] * cfg.grid[1], bases[2].shape[1]
        gains, row_gains, tones = [], [], []
        for c in range(3):
            x32 = np.ascontiguousarray(small[..., c])
            x, y = x32.astype(np.float64), small_target[..., c].astype(np.float64)
            tone = hat_basis(x32, cfg.tone_knots).astype(np.float64)
            scaled_penalty = self._penalty * max(float(np.mean(x32 * x32)), 1e-4) * x.size
            prior = scaled_penalty @ self._identity
            weights = np.ones_like(x)
            for iteration in range(cfg.iterations):
                normal, rhs = self._normal_equations(x, y, tone, weights, bases)
                theta = np.linalg.solve(normal + scaled_penalty, rhs + prior)
                if iteration + 1 < cfg.iterations:
                    residual = np.abs(self._model(x, tone, theta, bases) - y)
                    # Huber weights at twice the robust residual scale (the lower median): atlas flaws count less.
                    middle = (residual.size - 1) // 2
                    scale = 2.0 * 1.4826 * float(np.partition(residual.reshape(-1), middle)[middle]) + 1e-4
                    weights = np.minimum(scale / np.maximum(residual, 1e-12), 1.0)
            gains.append(theta[:n_grid].reshape(cfg.grid))
            row_gains.append(theta[n_grid:n_grid + n_rows])
            tones.append(theta[n_grid + n_rows:])
        as32 = lambda parts: np.asarray(parts, np.float32)  # noqa: E731
        return FlickerCorrection(as32(gains), as32(row_gains), as32(tones))

    def project(self, frame: np.ndarray, target: np.ndarray) -> np.ndarray:
        """`frame` corrected by the model fitted from it to `target`, plus the small part of what the
        model leaves of the correction (see residual_tolerance and residual_blur)."""
        return self.project_with_correction(frame, target)[0]

    def project_with_correction(self, frame: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, FlickerCorrection]:
        """(the projected frame, the fitted correction): `correction.apply(frame)` is the model's
        correction alone, bit for bit the frame the projection started from (a few numbers to keep
        instead of a frame)."""
        frame, target = float_rgb(frame), float_rgb(target)  # converted once, for the fit and the apply
        correction = self.fit(frame, target)
        model = correction.apply(frame)
        tolerance = self.config.residual_tolerance
        if tolerance <= 0:
            return model, correction
        blur = self.config.residual_blur
        out = np.empty_like(model)  # exp(-(r / tolerance)^2) r, r = target - model, band by band in place
        bands = row_bands(*model.shape)
        for band in bands:
            residual = np.subtract(target[band], model[band])
            weight = np.divide(residual, np.float32(tolerance), out=out[band])
            np.square(weight, out=weight)
            np.negative(weight, out=weight)
            np.exp(weight, out=weight)
            weight *= residual
            if blur <= 0:  # added pixel by pixel: done with this band
                weight += model[band]
                np.clip(weight, 0.0, 1.0, out=weight)
        if blur > 0:
            out = low_pass(out, blur)
            for band in bands:
                part = out[band]
                part += model[band]
                np.clip(part, 0.0, 1.0, out=part)
        return out, correction
