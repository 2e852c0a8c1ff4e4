"""Lumbar spine anatomy of one synthetic patient, as geometry in world millimetres (RAS).

A patient is T12 (optional) or L1 to L5 plus the sacrum. The spine follows a
curve whose tangent has a coronal angle theta (scoliosis) and a sagittal
angle phi (lordosis). Each vertebra is a rigid body whose axial axis is the
local tangent, so its endplates are perpendicular to the curve; the Cobb
angle is therefore exactly max(theta) - min(theta) over the vertebrae, and
the generator sets theta so that this equals the requested angle.

Vertebral body: an elliptic cylinder (semi-axes a lateral, b anterior-posterior,
height h) with a cortical shell; posterior elements: an arch around the canal,
a spinous and two transverse processes. Discs fill the space between two
endplates, with a nucleus inside; degeneration lowers their height, herniation
bulges them into the canal. Fractures lower a body's height (Genant grades).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from tasks.labels import SACRUM, disc_label


class Tissue(IntEnum):
    """Codes of the tissue map; imaging renders intensities from them."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    CORTICAL = 3
    TRABECULAR = 4
    POSTERIOR = 5
    ANNULUS = 6
    NUCLEUS = 7
    CSF = 8


# Disc height factor by Pfirrmann-like grade (1 healthy ... 5 collapsed).
DISC_HEIGHT_BY_GRADE = {1: 1.0, 2: 0.95, 3: 0.8, 4: 0.6, 5: 0.4}
# Vertebral body height loss by Genant fracture grade (0 none ... 3 severe).
FRACTURE_HEIGHT_LOSS = {0: 0.0, 1: 0.22, 2: 0.32, 3: 0.45}


@dataclass(frozen=True)
class CohortSettings:
    """Prevalences and ranges the patients are drawn from."""

    t12_probability: float = 0.5
    size_range: tuple[float, float] = (0.85, 1.15)
    lordosis_range: tuple[float, float] = (30.0, 60.0)
    scoliosis_probability: float = 0.3
    cobb_range: tuple[float, float] = (10.0, 40.0)
    degeneration: float = 0.5
    herniation_probability: float = 0.15
    fracture_probability: float = 0.05
    osteoporosis_probability: float = 0.2


@dataclass(frozen=True)
class Vertebra:
    """One vertebra (or the sacrum): VerSe label and size in mm."""

    label: int
    height: float
    a: float
    b: float
    fracture: int = 0


@dataclass(frozen=True)
class Disc:
    """The disc below vertebra ``upper``: grade 1-5 and herniation depth (mm, 0 = none)."""

    upper: int
    lower: int
    height: float
    grade: int
    herniation: float = 0.0

    @property
    def label(self) -> int:
        return disc_label(self.upper)


@dataclass(frozen=True)
class Pose:
    """Where a vertebra sits: centre of its body and its frame (columns e_x, e_y, e_z)."""

    center: np.ndarray
    frame: np.ndarray


@dataclass(frozen=True)
class Anatomy:
    """Everything about one patient's spine that images and labels are made from."""

    vertebrae: tuple[Vertebra, ...]
    discs: tuple[Disc, ...]
    lordosis: float
    cobb: float
    osteoporosis: bool
    scale: float
    canal: tuple[float, float]
    body: tuple[float, float, float]
    poses: tuple[Pose, ...] = field(default=(), compare=False)

    def stenosis(self, disc: Disc) -> int:
        """Canal stenosis at a disc level on RSNA's scale (0 normal/mild, 1 moderate,
        2 severe), the phantoms' rule: the herniation's intrusion into the canal's
        antero-posterior diameter under 30%, up to 40%, or more (phantom herniations
        reach 21-47% of the diameter)."""
        if disc.herniation <= 0:
            return 0
        compromise = (disc.herniation + 1.0) / (2 * self.canal[1])
        return 0 if compromise < 0.3 else 1 if compromise < 0.4 else 2

    def endplate_tilts(self) -> np.ndarray:
        """Coronal tilt (degrees) of each vertebra's endplates as seen on an AP view."""
        return np.array([np.degrees(np.arctan2(p.frame[0, 2], p.frame[2, 2])) for p in self.poses])


def sample_anatomy(rng: np.random.Generator, cohort: CohortSettings) -> Anatomy:
    """Draw one patient's anatomy and lay out its spine."""
    s = rng.uniform(*cohort.size_range)
    labels = ([19] if rng.random() < cohort.t12_probability else []) + [20, 21, 22, 23, 24]
    vertebrae = []
    for label in labels:
        level = label - 19  # 0 for T12, 1..5 for L1..L5
        fracture = 0
        if rng.random() < cohort.fracture_probability:
            fracture = int(rng.integers(1, 4))
        height = s * (23.0 + 1.0 * level) * rng.uniform(0.95, 1.05)
        height *= 1.0 - FRACTURE_HEIGHT_LOSS[fracture]
        a = s * (19.0 + 1.3 * level) * rng.uniform(0.95, 1.05)
        b = s * (14.0 + 0.8 * level) * rng.uniform(0.95, 1.05)
        vertebrae.append(Vertebra(label, height, a, b, fracture))
    sacrum_top = vertebrae[-1]
    vertebrae.append(Vertebra(SACRUM, s * 30.0, sacrum_top.a * 1.05, sacrum_top.b * 1.0))

    discs = []
    for upper, lower in itertools.pairwise(vertebrae):
        level = upper.label - 19
        # Lower levels degenerate more often; 'degeneration' shifts the whole cohort.
        severity = cohort.degeneration * (0.4 + 0.15 * level) + rng.normal(0.0, 0.6)
        grade = int(np.clip(round(1 + 2.2 * severity), 1, 5))
        base = s * (8.0 + 0.7 * level) * (0.85 if lower.label == SACRUM else 1.0)
        height = base * DISC_HEIGHT_BY_GRADE[grade] * rng.uniform(0.92, 1.08)
        herniation = 0.0
        if grade >= 3 and rng.random() < cohort.herniation_probability * (1 + level / 3):
            herniation = rng.uniform(3.0, 6.0) * s
        discs.append(Disc(upper.label, lower.label, height, grade, herniation))

    cobb = 0.0
    if rng.random() < cohort.scoliosis_probability:
        cobb = rng.uniform(*cohort.cobb_range)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    lordosis = rng.uniform(*cohort.lordosis_range)
    osteoporosis = bool(rng.random() < cohort.osteoporosis_probability)
    canal = (s * rng.uniform(10.0, 12.5), s * rng.uniform(7.5, 9.5))
    body = (s * rng.uniform(130, 160), s * rng.uniform(110, 130), rng.uniform(8, 25))
    anatomy = Anatomy(tuple(vertebrae), tuple(discs), lordosis, cobb, osteoporosis, s, canal, body)
    poses = layout(anatomy, direction)
    return Anatomy(**{**anatomy.__dict__, "poses": poses})


def _frame(theta: float, phi: float) -> np.ndarray:
    """Orthonormal frame whose e_z is the spine tangent for coronal/sagittal angles (radians)."""
    e_z = np.array([np.sin(theta) * np.cos(phi), np.sin(phi), np.cos(theta) * np.cos(phi)])
    e_y = np.array([0.0, 1.0, 0.0]) - e_z[1] * e_z
    e_y /= np.linalg.norm(e_y)
    e_x = np.cross(e_y, e_z)
    return np.stack([e_x, e_y, e_z], axis=1)


def layout(anatomy: Anatomy, direction: float = 1.0) -> tuple[Pose, ...]:
    """Place every vertebra along the spine curve, top to bottom.

    Arc length s runs down from the top vertebra's centre. The coronal angle
    is theta(s) = direction * cobb/2 * cos(pi * s / s_L5), +-cobb/2 at the top
    vertebra and L5; the sagittal angle runs linearly from -lordosis/2 at the
    top to +lordosis/2 at the sacrum.
    """
    vs, ds = anatomy.vertebrae, anatomy.discs
    arc = [0.0]
    for upper, disc, lower in zip(vs[:-1], ds, vs[1:], strict=True):
        arc.append(arc[-1] + upper.height / 2 + disc.height + lower.height / 2)
    s_l5, s_sacrum = arc[-2], arc[-1]
    half_cobb = np.radians(anatomy.cobb) / 2 * direction
    half_lordosis = np.radians(anatomy.lordosis) / 2

    def angles(s: float) -> tuple[float, float]:
        theta = half_cobb * np.cos(np.pi * min(s, s_l5) / s_l5)
        phi = -half_lordosis + 2 * half_lordosis * s / s_sacrum
        return theta, phi

    step = 0.25
    samples = np.arange(0.0, s_sacrum + step, step)
    tangents = np.array([_frame(*angles(s))[:, 2] for s in samples])
    # Moving down the spine is moving against the (superior-pointing) tangent.
    positions = np.zeros((len(samples), 3))
    positions[1:] = -np.cumsum((tangents[1:] + tangents[:-1]) / 2 * step, axis=0)
    poses = []
    for s in arc:
        center = np.array([np.interp(s, samples, positions[:, i]) for i in range(3)])
        poses.append(Pose(center, _frame(*angles(s))))
    mean_x = np.mean([p.center[0] for p in poses])
    return tuple(Pose(p.center - np.array([mean_x, 0.0, 0.0]), p.frame) for p in poses)
