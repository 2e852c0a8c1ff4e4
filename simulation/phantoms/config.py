"""The phantom cohort config: who the patients are and which scanners image them.

``[cohort]`` sets prevalences and ranges; each ``[[scanner]]`` is one virtual
site with its modality and scanner effects. The defaults are the embedded
default cohort (three sites: two CT scanners that differ in resolution,
noise and calibration, and one MR scanner with T1 and T2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulation.phantoms.anatomy import CohortSettings
from simulation.phantoms.imaging import ScannerEffects
from tasks.config import ConfigError, Key, load_toml, unknown_name, validate


def _ordered_pair(value: list[float]) -> str | None:
    return None if value[0] <= value[1] else "must be [low, high] with low <= high"


def _fractions(value: list[float]) -> str | None:
    return None if abs(sum(value) - 1.0) < 1e-6 else f"must sum to 1, got {sum(value):g}"


def _orientation(value: str) -> str | None:
    axes = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    ok = len(value) == 3 and all(c in axes for c in value) and {axes[c] for c in value} == {0, 1, 2}
    return None if ok else f"'{value}' is not an orientation code such as RAS, LPS or PIR"


COHORT_KEYS = (
    Key("patients", "int", 24, "Number of patients.", minimum=1),
    Key("seed", "int", 0, "Seed; the same seed and config give byte-identical images."),
    Key("split", "list[float]", [0.6, 0.2, 0.2], "Fractions of each site's patients in "
        "train, val, test.", length=3, minimum=0.0, check=_fractions),
    Key("t12_probability", "float", 0.5, "Chance that the scan starts at T12 (else L1).",
        minimum=0.0, maximum=1.0),
    Key("size_range", "list[float]", [0.85, 1.15], "Range of the patient's anatomical scale.",
        length=2, minimum=0.1, check=_ordered_pair),
    Key("lordosis_range", "list[float]", [30.0, 60.0], "Range of the L1-S1 lordosis (degrees).",
        length=2, minimum=0.0, check=_ordered_pair),
    Key("scoliosis_probability", "float", 0.3, "Chance of a lateral curve.", minimum=0.0,
        maximum=1.0),
    Key("cobb_range", "list[float]", [10.0, 40.0], "Range of the Cobb angle of a curve (degrees).",
        length=2, minimum=0.0, check=_ordered_pair),
    Key("degeneration", "float", 0.5, "How advanced disc degeneration is across the cohort "
        "(0 young, 1 old).", minimum=0.0, maximum=1.0),
    Key("herniation_probability", "float", 0.15, "Chance that a degenerated disc herniates.",
        minimum=0.0, maximum=1.0),
    Key("fracture_probability", "float", 0.05, "Chance per vertebra of a compression fracture.",
        minimum=0.0, maximum=1.0),
    Key("osteoporosis_probability", "float", 0.2, "Chance of osteoporosis (lower bone density).",
        minimum=0.0, maximum=1.0),
)

SCANNER_KEYS = (
    Key("name", "str", None, "Site name (the manifest's `site`).", required=True),
    Key("modality", "str", None, "What the scanner makes.", choices=("CT", "MR", "XR"),
        required=True),
    Key("sequences", "list[str]", ["T1", "T2"], "MR sequences acquired (MR only).",
        choices=("T1", "T2")),
    Key("views", "list[str]", ["AP", "LAT"], "Radiograph views (XR only).", choices=("AP", "LAT")),
    Key("share", "float", 1.0, "Relative share of the cohort's patients imaged here.",
        minimum=0.0),
    Key("extra_test_patients", "int", 0, "Test-only patients imaged here besides the cohort's "
        "`patients` (which `spinefl phantoms --patients` sets), numbered after them: a bigger "
        "test set, while every other patient, image and split stays as it is.", minimum=0),
    Key("spacing", "list[float]", [1.0, 1.0, 2.0], "Voxel spacing in mm (x, y, slice); XR uses "
        "the first entry as pixel size.", length=3, minimum=0.1),
    Key("fov", "float", 130.0, "In-plane field of view in mm.", minimum=40.0),
    Key("fov_jitter", "float", 5.0, "Random shift of the field of view per patient (mm).",
        minimum=0.0),
    Key("scale", "float", 1.0, "Intensity scale of stored values (MR: signal 0-1 times this).",
        minimum=0.0),
    Key("offset", "float", 0.0, "Intensity offset of stored values (CT: calibration error, HU)."),
    Key("noise", "float", 15.0, "Noise standard deviation (CT: HU; MR: fraction of full signal; "
        "XR: line-integral units).", minimum=0.0),
    Key("bias", "float", 0.0, "Strength of the smooth multiplicative bias field.", minimum=0.0),
    Key("blur", "float", 0.5, "Point-spread width in voxels.", minimum=0.0),
    Key("orientation", "str", "RAS", "Axis orientation of stored volumes (RAS, LPS, PIR, ...).",
        check=_orientation),
)

SCHEMA = {"cohort": COHORT_KEYS}
SCANNER_SCHEMA = {"scanner": SCANNER_KEYS}

DEFAULT_SCANNERS: tuple[dict[str, Any], ...] = (
    {"name": "site-a-ct", "modality": "CT", "share": 1.0, "spacing": [1.0, 1.0, 2.0],
     "noise": 15.0},
    {"name": "site-b-mr", "modality": "MR", "share": 1.0, "spacing": [1.2, 1.2, 3.0],
     "scale": 800.0, "noise": 0.03, "bias": 0.25, "fov": 140.0},
    {"name": "site-c-ct", "modality": "CT", "share": 1.0, "spacing": [0.8, 0.8, 2.5],
     "noise": 35.0, "offset": -20.0, "blur": 0.8, "orientation": "LPS"},
)


@dataclass(frozen=True)
class Scanner:
    """One virtual site's scanner."""

    name: str
    modality: str
    sequences: tuple[str, ...]
    views: tuple[str, ...]
    share: float
    extra_test_patients: int
    spacing: tuple[float, float, float]
    fov: float
    fov_jitter: float
    effects: ScannerEffects
    orientation: str


@dataclass(frozen=True)
class CohortConfig:
    """A validated phantom cohort config."""

    patients: int
    seed: int
    split: tuple[float, float, float]
    anatomy: CohortSettings
    scanners: tuple[Scanner, ...]
    raw: dict[str, Any]


def _scanner(values: dict[str, Any]) -> Scanner:
    effects = ScannerEffects(values["scale"], values["offset"], values["noise"], values["bias"],
                             values["blur"])
    return Scanner(values["name"], values["modality"], tuple(values["sequences"]),
                   tuple(values["views"]), values["share"], values["extra_test_patients"],
                   tuple(values["spacing"]),
                   values["fov"], values["fov_jitter"], effects, values["orientation"])


def cohort_config(raw: dict[str, Any], where: str) -> CohortConfig:
    """Validate a parsed cohort config (defaults fill the gaps)."""
    raw = dict(raw)
    for section in raw:
        if section not in (*SCHEMA, "scanner"):
            raise unknown_name(where, section, [*SCHEMA, "scanner"], "section")
    scanners_raw = raw.pop("scanner", list(DEFAULT_SCANNERS))
    if not isinstance(scanners_raw, list) or not scanners_raw:
        raise ConfigError(f"{where}: 'scanner' must be one or more [[scanner]] tables")
    cohort = validate(raw, SCHEMA, where)["cohort"]
    validated = [
        validate({"scanner": entry}, SCANNER_SCHEMA, f"{where} [[scanner]] #{i}")["scanner"]
        for i, entry in enumerate(scanners_raw, start=1)]
    scanners = [_scanner(values) for values in validated]
    for scanner in scanners:
        if scanner.extra_test_patients and not scanner.share:
            raise ConfigError(f"{where}: scanner '{scanner.name}' has extra_test_patients but "
                              "share 0: a site with test patients only would be a hospital "
                              "with nothing to train on")
    names = [s.name for s in scanners]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: scanner names must be unique, got {names}")
    if sum(s.share for s in scanners) <= 0:
        raise ConfigError(f"{where}: at least one scanner needs a share above 0")
    anatomy = CohortSettings(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in cohort.items()
                                if k not in ("patients", "seed", "split")})
    # the record a phantom folder keeps: without test-only patients, as before the key was
    # added, so that folders made then are still this cohort
    record = [{k: v for k, v in entry.items() if k != "extra_test_patients" or v}
              for entry in validated]
    return CohortConfig(cohort["patients"], cohort["seed"], tuple(cohort["split"]), anatomy,
                        tuple(scanners), {"cohort": cohort, "scanner": record})


def load_cohort_config(path: Path | None) -> CohortConfig:
    """The cohort config of a TOML file, or the embedded default when ``path`` is None."""
    if path is None:
        return cohort_config({}, "default cohort")
    return cohort_config(load_toml(path), str(path))
