r"""A microscope image's constant floor (camera offset, dark counts, autofluorescence): found and removed.

A raw frame is :math:`I = B + g\,(K_s * \mu) + \text{noise}`: a floor :math:`B`, the blurred density
scaled by a gain :math:`g`, shot noise. Nudging compares :math:`K_h * \mu` with a *density*, so a
floor left in the image is read as cells spread evenly over the whole window (normalizing the
image then only hides it): the nudged run is pulled towards a uniform cloud.

- :func:`floor_fraction` -- the share of each frame's total that a constant floor carries: its
  lowest 1% of pixels times the pixel count, over the sum. A density that decays towards the
  window's edges has a floor of about 0; a raw camera frame has 30-90%.
- :func:`estimate_background` -- the floor of each frame as the sigma-clipped median of its pixels
  (median and MAD-based spread, pixels more than 3 spreads away dropped, repeated until stable):
  the level of the empty part of the frame, and the noise spread there. It needs the empty part
  to be most of the lower half of the pixels; :class:`Background` says how many pixels it kept,
  and calls the estimate unreliable when under 20% were kept or when over 1% of the pixels are
  darker than it by 4 noise spreads (then it found the level of the cells, not of the background).

Shapes: ``images (..., L, *image)`` numpy (any leading axes); levels per frame ``(..., L)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

__all__ = ["Background", "estimate_background", "constant_background", "floor_fraction", "check_floor",
           "negative_message", "remove_background", "FLOOR_LIMIT", "FLOOR_QUANTILE"]

#: a constant floor carrying more than this share of a frame's total is refused (CLI) or warned (API)
FLOOR_LIMIT = 0.05
#: the floor is read at this low quantile of a frame's pixels (robust to a few dead pixels)
FLOOR_QUANTILE = 0.01
_CLIP = 3.0  # spreads: pixels beyond this from the median are cells (or hot pixels), not background
_MIN_KEPT = 0.2  # an estimate from fewer than 20% of the pixels is flagged unreliable


@dataclass
class Background:
    """Per-frame floor levels ``(..., L)``, the noise spread around them ``(..., L)``, the share of
    pixels the estimate kept ``(..., L)``, and the verdict (``reliable``, ``reasons``)."""

    levels: np.ndarray
    noise: np.ndarray
    kept: np.ndarray
    source: str
    reliable: bool
    reasons: List[str]

    def describe(self) -> str:
        low, high = float(self.levels.min()), float(self.levels.max())
        level = f"{low:.4g}" if np.isclose(low, high) else f"{low:.4g}..{high:.4g}"
        text = f"background {level} per pixel ({self.source}; noise spread {float(np.median(self.noise)):.3g})"
        return text if self.reliable else f"{text}; unreliable: {'; '.join(self.reasons)}"


def _frames(images: np.ndarray, image_dims: int) -> np.ndarray:
    """``(F, P)``: every frame of ``images (..., *image)`` flattened."""
    images = np.asarray(images, dtype=np.float64)
    if image_dims < 1 or images.ndim <= image_dims:
        raise ValueError(f"images: expected (L, *image) with {image_dims} image axes, but got shape {images.shape}")
    return images.reshape(-1, int(np.prod(images.shape[-image_dims:])))


def floor_fraction(images: np.ndarray, image_dims: int) -> np.ndarray:
    """Share of each frame's total carried by a constant floor at its lowest 1% of pixels: ``(..., L)``.

    ``image_dims``: how many trailing axes are the image (2 for a 2-D stack). A frame whose total is
    not positive gets ``nan`` (no density to compare with)."""
    frames = _frames(images, image_dims)
    floor = np.quantile(frames, FLOOR_QUANTILE, axis=1)
    total = frames.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, floor * frames.shape[1] / total, np.nan)
    return share.reshape(np.asarray(images).shape[:-image_dims])


def estimate_background(images: np.ndarray, image_dims: int, iterations: int = 20) -> Background:
    """Sigma-clipped median of each frame: its floor level, with the noise spread and kept share."""
    frames = _frames(images, image_dims)
    levels, noise, kept = np.empty(len(frames)), np.empty(len(frames)), np.empty(len(frames))
    darker = np.empty(len(frames))
    for index, values in enumerate(frames):
        keep = np.isfinite(values)
        for _ in range(iterations):
            median = np.median(values[keep])
            spread = 1.4826 * np.median(np.abs(values[keep] - median))
            if spread == 0:  # a flat frame (or a flat floor): the median is the level
                break
            new = keep & (np.abs(values - median) <= _CLIP * spread)
            if np.array_equal(new, keep):
                break
            keep = new
        levels[index], noise[index], kept[index] = median, spread, keep.mean()
        darker[index] = np.mean(values < median - 4 * spread)  # noise alone: 3e-5 of the pixels
    shape = np.asarray(images).shape[:-image_dims]
    reasons = []
    if float(kept.min()) < _MIN_KEPT:
        reasons.append(f"only {100 * float(kept.min()):.0f}% of a frame's pixels look like background (the cells "
                       f"fill the window): pass the level as a number")
    if float(darker.max()) > 0.01:
        reasons.append(f"{100 * float(darker.max()):.0f}% of a frame's pixels are darker than the estimated floor by "
                       f"more than 4 noise spreads: the estimate is the level of the cells, not of the background; "
                       f"pass the level as a number")
    return Background(levels.reshape(shape), noise.reshape(shape), kept.reshape(shape), "estimated: sigma-clipped "
                      "median of each frame", not reasons, reasons)


def constant_background(images: np.ndarray, image_dims: int, level: float) -> Background:
    """The user's floor ``level``, the same for every frame."""
    shape = np.asarray(images).shape[:-image_dims]
    if not np.isfinite(level):
        raise ValueError(f"background: expected 'auto' or a finite number, but got {level!r}")
    full = np.full(shape, float(level))
    return Background(full, np.full(shape, np.nan), np.full(shape, np.nan), "given", True, [])


def _names(names) -> dict:
    """What the messages call the options: the Python keywords, or the command line's flags."""
    given = dict(names or {})
    return {"background": given.get("background", "background="), "normalize": given.get("normalize", "normalize=")}


def _option(names: dict, key: str, value: str) -> str:
    """``background='auto'`` (Python) or ``--background auto`` (command line)."""
    name = names[key]
    return f"{name}{value!r}" if name.endswith("=") else f"{name} {value}"


def check_floor(values: np.ndarray, image_dims: int, names=None):
    """The message for a constant floor under the images as given (``values (..., L, *image)``), or None."""
    names = _names(names)
    share = floor_fraction(values, image_dims)
    typical = float(np.nanmedian(share)) if np.isfinite(share).any() else 0.0
    if not typical > FLOOR_LIMIT:
        return None
    level = float(np.median(np.quantile(_frames(values, image_dims), FLOOR_QUANTILE, axis=1)))
    return (f"{names['background'].rstrip('=')}: the images sit on a constant floor (their lowest 1% of pixels "
            f"are about {level:.4g}) that carries {100 * typical:.0f}% of a frame's total; the nudging would read it "
            f"as cells spread over the whole window: pass {_option(names, 'background', 'auto')} to estimate and "
            f"remove it, a known level as a number, or {_option(names, 'background', '0')} if it is density")


def negative_message(values: np.ndarray, names=None):
    """The warning for negative pixels in the images as given, or None."""
    values = np.asarray(values)
    # FFT-smoothed densities carry rounding of about 1e-16 of their peak below 0: not negative pixels
    negative = int((values < -1e-9 * float(np.abs(values).max(initial=0.0))).sum())
    if negative == 0:
        return None
    return (f"densities: {negative} of {np.asarray(values).size} pixels are negative (min "
            f"{float(np.min(values)):.4g}); a density is never negative: these pixels are used as given (they push "
            f"particles away), check the offset the images were corrected with")


def remove_background(values: np.ndarray, image_dims: int, background) -> tuple:
    """``(values minus the per-frame floor, Background)`` for ``background`` ``"auto"`` or a number."""
    if isinstance(background, str):
        if background != "auto":
            raise ValueError(f"background: expected None, 'auto' or a number, but got {background!r}")
        found = estimate_background(values, image_dims)
    elif isinstance(background, (int, float, np.floating, np.integer)) and not isinstance(background, bool):
        found = constant_background(values, image_dims, float(background))
    else:
        raise TypeError(f"background: expected None, 'auto' or a number, but got {type(background).__name__}")
    levels = found.levels.reshape(found.levels.shape + (1,) * image_dims)
    return np.asarray(values, dtype=np.float64) - levels, found
