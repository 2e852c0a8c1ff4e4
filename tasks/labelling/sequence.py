"""Naming vertebrae: the network's level scores, read along the spine, decoded into one run
of consecutive vertebrae.

A network's per-voxel level is a local guess: it can call two neighbours by one name, shift
a name by one level, or miss a vertebra. The spine itself is the prior that corrects it, in
steps that can each be inspected:

- ``arc_lengths``: the predicted spine's centre line (the weighted centre of each axial
  slice, smoothed) and each foreground voxel's arc length along it, head to feet;
- ``profile``: per arc-length bin, the foreground mass and the mass each level gets;
- ``typical_step``: the length of one vertebra and disc, from the profile's periodicity,
  else (``level_step``) from how far apart the network puts consecutive levels;
- ``vertebrae``: the bins cut into pieces of about one step, at the network's level
  changes or at the discs (a dynamic programme);
- ``name``: the pieces, top to bottom, are consecutive levels, shifted as a whole to the
  names most of the mass agrees with (so the top is named by counting from the sacrum).

``decode`` chains them and returns each named piece's centroid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal
from scipy.spatial import cKDTree

from tasks.labelling.centroids import Centroids
from tasks.labels import SACRUM

SHORTEST, LONGEST = 0.6, 1.5  # vertebra length bounds, in typical steps
STEP_MM = (16.0, 60.0)  # the range a spine's step (vertebra and disc, mm) is sought in


def arc_lengths(index: np.ndarray, weights: np.ndarray, affine: np.ndarray,
                smooth: float = 40.0) -> np.ndarray:
    """Arc length (mm, from the top) along the spine of each voxel.

    ``index``: (N, 3) voxel indices of a grid whose third axis runs feet to head (RAS);
    ``weights``: (N,) foreground probability. The centre line joins the weighted centre
    of every axial slice, smoothed by a local parabola over ``smooth`` mm each side (longer
    than a vertebra, so the slices' jumps at the discs even out; a straight or evenly
    curved spine keeps its shape); a voxel's arc length is that of its nearest
    centre-line point plus its offset along the line there."""
    z = index[:, 2].astype(int)
    slices = np.unique(z)[::-1]
    centres = np.array([np.average(index[z == k], axis=0, weights=weights[z == k])
                        for k in slices])
    reach = round(smooth / float(np.linalg.norm(affine[:3, 2])))
    odd = len(slices) if len(slices) % 2 else len(slices) - 1
    window = min(2 * reach + 1, odd)
    if window > 2:
        centres[:, :2] = signal.savgol_filter(centres[:, :2], window, 2, axis=0)
    line = centres @ affine[:3, :3].T + affine[:3, 3]
    points = index @ affine[:3, :3].T + affine[:3, 3]
    if len(slices) == 1:
        return -(points[:, 2] - line[0, 2])
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))]
    tangent = np.gradient(line, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    _, nearest = cKDTree(line).query(points)
    return arc[nearest] + np.einsum("ij,ij->i", points - line[nearest], tangent[nearest])


def profile(arc: np.ndarray, weights: np.ndarray, levels: np.ndarray, width: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin the voxels by arc length (bins of ``width`` mm).

    ``levels``: (N, J) each voxel's level probabilities. Returns each voxel's bin (N,),
    the foreground mass per bin (T,) and each level's mass per bin (T, J)."""
    bins = ((arc - arc.min()) // width).astype(int)
    count = int(bins.max()) + 1
    foreground = np.bincount(bins, weights=weights, minlength=count)
    mass = np.stack([np.bincount(bins, weights=levels[:, j], minlength=count)
                     for j in range(levels.shape[1])], axis=1)
    return bins, foreground, mass


def typical_step(foreground: np.ndarray, width: float,
                 bounds: tuple[float, float] = STEP_MM) -> float | None:
    """The spine's step (bins): the lag, within ``bounds`` mm, at which the foreground
    profile best repeats itself (vertebra, disc, vertebra...). The shortest lag whose
    autocorrelation comes within 80% of the best wins, so a multiple of the step does
    not; refined between bins by a parabola. None if the profile is too short."""
    low, high = max(1, int(bounds[0] // width)), int(np.ceil(bounds[1] / width))
    if len(foreground) < 2 * high:
        return None
    detrended = foreground - ndimage.uniform_filter1d(foreground, high, mode="nearest")
    energy = float(detrended @ detrended)
    if energy <= 0:
        return None
    lags = np.arange(low - 1, high + 2)
    corr = np.array([detrended[:-lag] @ detrended[lag:] / energy if lag else 1.0
                     for lag in lags])
    inner = np.arange(1, len(lags) - 1)
    peaks = inner[(corr[inner] >= corr[inner - 1]) & (corr[inner] >= corr[inner + 1])
                  & (corr[inner] > 0)]
    if not len(peaks):
        return None
    peak = int(peaks[corr[peaks] >= 0.8 * corr[peaks].max()][0])
    left, centre, right = corr[peak - 1], corr[peak], corr[peak + 1]
    bend = left - 2 * centre + right
    return float(lags[peak] + (0.5 * (left - right) / bend if bend < 0 else 0.0))


def level_step(mass: np.ndarray, sacrum: bool, width: float,
               bounds: tuple[float, float] = STEP_MM) -> float | None:
    """The spine's step (bins) from the network's own levels, for a foreground profile that
    does not repeat (a network that fills the discs too): the median distance, within
    ``bounds`` mm, between the mass centres of consecutive levels, each over the bins it
    wins (so that a level's faint mass elsewhere does not pull its centre), that each hold
    at least a quarter of the largest level's mass. The sacrum is left out (it is no
    vertebra's length). None without two such neighbours."""
    own = np.where(mass.argmax(axis=1)[:, None] == np.arange(mass.shape[1]), mass, 0.0)
    own = own[:, :-1] if sacrum else own
    total = own.sum(axis=0)
    if not total.any():
        return None
    centre = np.arange(len(own)) @ own / np.maximum(total, 1e-12)
    kept = total >= 0.25 * total.max()
    gaps = np.diff(centre)[kept[:-1] & kept[1:]]
    gaps = gaps[(gaps >= bounds[0] / width) & (gaps <= bounds[1] / width)]
    return float(np.median(gaps)) if len(gaps) else None


def vertebrae(foreground: np.ndarray, mass: np.ndarray, step: float | None,
              sacrum: bool) -> list[tuple[int, int]]:
    """Cut the profile into vertebrae: (start, end) bins, top first, covering every bin.

    Each piece scores the mass of its own most frequent level, less a length prior
    (its squared relative deviation from ``step``, times a typical vertebra's mass), and
    each cut costs the smaller foreground of the two bins it separates: cuts fall where
    the network's level changes or at a disc, and pieces keep to about one step, so two
    vertebrae the network calls alike are still cut apart and a missed one leaves an
    empty piece. Pieces span SHORTEST to LONGEST steps; the first and last may be
    shorter (the field of view cuts them), and with ``sacrum`` a last piece that is
    mostly sacrum may be any length."""
    count = len(foreground)
    if step is None:
        return [(0, count)]
    longest = max(1, round(LONGEST * step))
    shortest = min(longest, max(1, round(SHORTEST * step)))
    cum = np.vstack([np.zeros(mass.shape[1]), np.cumsum(mass, axis=0)])
    cut = np.r_[0.0, np.minimum(foreground[:-1], foreground[1:])]
    vertebra = float(np.median(foreground[foreground > 0])) * step

    def score(begin: int, end: int, free: bool = False) -> float:
        length = end - begin
        truncated = (begin == 0 or end == count) and length < step
        prior = 0.0 if free or truncated else vertebra * ((length - step) / step) ** 2
        return float(np.max(cum[end] - cum[begin])) - cut[begin] - prior

    best = np.full(count + 1, -np.inf)
    start = np.zeros(count + 1, dtype=int)
    best[0] = 0.0
    for end in range(1, count + 1):
        for begin in range(max(0, end - longest), end):
            inner = begin > 0 and end < count
            if (inner and end - begin < shortest) or best[begin] == -np.inf:
                continue
            value = best[begin] + score(begin, end)
            if value > best[end]:
                best[end], start[end] = value, begin
    if sacrum:
        for begin in range(count):
            tail = cum[count] - cum[begin]
            if int(np.argmax(tail)) == mass.shape[1] - 1 and best[begin] > -np.inf:
                value = best[begin] + score(begin, count, free=True)
                if value > best[count]:
                    best[count], start[count] = value, begin
    pieces = [(int(start[count]), count)]
    while pieces[-1][0] > 0:
        end = pieces[-1][0]
        pieces.append((int(start[end]), end))
    return pieces[::-1]


def name(pieces: list[tuple[int, int]], mass: np.ndarray) -> list[int | None]:
    """Level index of each piece: consecutive pieces are consecutive levels, shifted as a
    whole to the offset where the most mass agrees with its level; None for pieces beyond
    the first or last level."""
    levels = mass.shape[1]
    agree = np.array([mass[a:b].sum(axis=0) for a, b in pieces])
    offsets = range(-len(pieces) + 1, levels)
    scores = [sum(agree[i, i + o] for i in range(len(pieces)) if 0 <= i + o < levels)
              for o in offsets]
    best = offsets[int(np.argmax(scores))]
    return [i + best if 0 <= i + best < levels else None for i in range(len(pieces))]


def decode(levels: np.ndarray, names: tuple[int, ...], affine: np.ndarray,
           min_voxels: float = 0.0, width: float | None = None) -> Centroids:
    """Named centroids (world mm) from level probabilities.

    ``levels``: (J, X, Y, Z) probabilities of each vertebra level, head to feet, on a grid
    whose index -> world map is ``affine`` (third axis feet to head); ``names``: their
    VerSe labels (the sacrum, if any, last). Foreground is where the levels together
    exceed 0.5, less islands under ``min_voxels``; a vertebra with less foreground mass is
    left out. ``width``: bin width in mm (default: the grid's largest spacing)."""
    foreground = levels.sum(axis=0)
    mask = foreground > 0.5
    parts, count = ndimage.label(mask)
    if count:
        sizes = np.bincount(parts.ravel())[1:]
        mask = np.isin(parts, np.flatnonzero(sizes >= max(min_voxels, 1)) + 1)
    index = np.argwhere(mask)
    if not len(index):
        return {}
    weights = foreground[mask]
    width = width or float(np.max(np.linalg.norm(affine[:3, :3], axis=0)))
    arc = arc_lengths(index.astype(float), weights, affine)
    bins, profile_fg, mass = profile(arc, weights, levels[:, mask].T, width)
    sacrum = names[-1] == SACRUM
    step = typical_step(profile_fg, width)
    if step is None:
        step = level_step(mass, sacrum, width)
    pieces = vertebrae(profile_fg, mass, step, sacrum)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    centroids = {}
    for (begin, end), level in zip(pieces, name(pieces, mass), strict=True):
        inside = (bins >= begin) & (bins < end)
        if level is not None and weights[inside].sum() >= max(min_voxels, 1e-9):
            centroids[names[level]] = np.average(world[inside], axis=0, weights=weights[inside])
    return centroids
