"""The project's one label convention for spine masks.

Vertebrae follow VerSe: 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum,
27 coccyx, 28 T13. Intervertebral discs are 100 + the VerSe value of the
vertebra above (T12/L1 = 119, L4/L5 = 123, L5/S1 = 124; names assume no L6). The spinal canal
(thecal sac) is 200. Every data source maps its own values onto these.
"""

from __future__ import annotations

VERTEBRA_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 7)},
    26: "S",
    27: "Co",
    28: "T13",
}
DISC_OFFSET = 100
CANAL = 200
SACRUM = 26

STRUCTURES = ("vertebra", "disc", "canal")


def disc_label(upper_vertebra: int) -> int:
    """Label value of the disc below ``upper_vertebra`` (a VerSe value)."""
    return DISC_OFFSET + upper_vertebra


def structure_of(value: int) -> str | None:
    """Structure name ('vertebra', 'disc', 'canal') of a label value; None for background."""
    if value in VERTEBRA_NAMES:
        return "vertebra"
    if DISC_OFFSET < value < DISC_OFFSET + 100 and (value - DISC_OFFSET) in VERTEBRA_NAMES:
        return "disc"
    if value == CANAL:
        return "canal"
    return None


def label_name(value: int) -> str:
    """Readable name of a label value: 'L4', 'L4/L5', 'canal'."""
    if value in VERTEBRA_NAMES:
        return VERTEBRA_NAMES[value]
    if structure_of(value) == "disc":
        upper = value - DISC_OFFSET
        lower = "S1" if upper == 24 else VERTEBRA_NAMES.get(upper + 1, "?")
        return f"{VERTEBRA_NAMES[upper]}/{lower}"
    if value == CANAL:
        return "canal"
    raise ValueError(f"{value} is not a label of the spinefl convention")


# Display colours of the convention (RGB, 0-1): vertebrae by region (cervical blues,
# thoracic greens, lumbar oranges, sacrum and coccyx purple), discs light grey, canal yellow.
_REGIONS = ((range(1, 8), (0.25, 0.45, 0.95)), (range(8, 20), (0.2, 0.7, 0.3)),
            (range(20, 26), (0.95, 0.55, 0.15)), (range(26, 29), (0.6, 0.35, 0.75)))


def label_colour(value: int) -> tuple[float, float, float]:
    """The display colour of a label value; neighbouring vertebrae alternate in brightness
    so that each stands apart."""
    if structure_of(value) == "disc":
        return (0.85, 0.85, 0.9)
    if value == CANAL:
        return (0.95, 0.85, 0.2)
    for values, (r, g, b) in _REGIONS:
        if value in values:
            shade = 1.0 if value % 2 else 0.7
            return (r * shade, g * shade, b * shade)
    return (1.0, 0.0, 0.0)  # outside the convention: shown, in red


# A structure class's colour (structures labels, whose values 1-3 are not VerSe's): that of a
# value of the structure.
_STRUCTURE_VALUES = {"vertebra": 20, "disc": 123, "canal": 200}


def class_colour(value: int, name: str) -> tuple[float, float, float]:
    """The display colour of a model's class: its label value's, or a structure class's
    (background black)."""
    return (0.0, 0.0, 0.0) if value == 0 else label_colour(_STRUCTURE_VALUES.get(name, value))


def colour_table(classes: dict[int, str]) -> str:
    """3D Slicer's colour table (a ``.ctbl`` file: value, name, R G B A in 0-255) of a model's
    classes (value -> name), background transparent."""
    lines = ["# Color table file (3D Slicer): spinefl label convention",
             f"# {len(classes)} values"]
    for value, name in sorted(classes.items()):
        r, g, b = (round(255 * c) for c in class_colour(value, name))
        lines.append(f"{value} {name.replace(' ', '_')} {r} {g} {b} {0 if value == 0 else 255}")
    return "\n".join(lines) + "\n"
