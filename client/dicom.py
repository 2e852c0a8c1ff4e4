"""DICOM series into volumes: headers, grouping, what is an image series, geometry.

Reading is in two passes so that large exports stream: ``read_header`` keeps a
few facts per file (no pixels), series are grouped and judged on those facts
(``series_problem``), and only a series worth keeping is decoded, one file at
a time (``build_volume``). Every refusal is a ``SeriesError`` whose message
says what is wrong in words a radiographer understands.

Geometry follows the DICOM patient coordinate system (LPS) and is returned as
a RAS affine (``tasks.imageio.Volume``): column 0 steps along a row (DICOM
column index), column 1 down a column (row index), column 2 from slice to
slice along the slice normal, in the order slices are sorted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.imageio import LPS_TO_RAS, ImageError, Volume

# DICOM Modality (0008,0060) values and the manifest modality they are.
DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "CR": "XR", "DX": "XR"}
# ViewPosition (0018,5101) values and the manifest view they are.
VIEWS = {"AP": "AP", "PA": "AP", "LL": "LAT", "RL": "LAT", "LAT": "LAT", "LATERAL": "LAT"}
# Words in a series description that mark a planning scan rather than a diagnostic series.
LOCALIZER_WORDS = ("localizer", "localiser", "scout", "survey", "topogram", "scanogram",
                   "3-plane", "3 plane", "tri-pilot", "pilot")
# Patient-orientation letters (PS3.3 C.7.6.1.1.1) as LPS unit vectors.
_LETTERS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0),
            "H": (0, 0, 1), "F": (0, 0, -1)}


class SeriesError(ImageError):
    """A DICOM series cannot become a volume; the message says why."""


@dataclass(frozen=True)
class DicomFile:
    """What one DICOM file's header says, without its pixels."""

    path: Path
    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class: str
    modality: str
    image_type: tuple[str, ...]
    description: str
    transfer_syntax: str
    has_pixels: bool
    frames: int
    instance_number: int | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    burned_in: str
    study_date: str
    sequence_hint: str = ""
    view: str = ""
    scanner: str = ""
    damage: str = ""


def read_header(path: Path) -> DicomFile:
    """The header facts of one file; raises ImageError when it is not readable DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        raise ImageError(f"{path}: not a DICOM file") from None
    except Exception as e:  # pydicom raises many types for broken files
        raise ImageError(f"{path}: unreadable DICOM ({type(e).__name__}: {e})") from None
    meta = getattr(ds, "file_meta", None)
    if "SeriesInstanceUID" not in ds or "SOPClassUID" not in ds:
        raise ImageError(f"{path}: DICOM without SeriesInstanceUID/SOPClassUID (a truncated "
                         "file, or not an image object, e.g. a DICOMDIR)")
    try:
        return DicomFile(
            path=path,
            patient_id=str(ds.get("PatientID", "")),
            study_uid=str(ds.get("StudyInstanceUID", "")),
            series_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            sop_class=str(ds.SOPClassUID),
            modality=str(ds.get("Modality", "")),
            image_type=tuple(str(v).upper() for v in _as_list(ds.get("ImageType", []))),
            description=str(ds.get("SeriesDescription", "")),
            transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "")),
            has_pixels="PixelData" in ds or "FloatPixelData" in ds,
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") else None,
            position=_floats(ds.get("ImagePositionPatient")),
            orientation=_floats(ds.get("ImageOrientationPatient")),
            burned_in=str(ds.get("BurnedInAnnotation", "")).upper(),
            study_date=str(ds.get("StudyDate", "")),
            sequence_hint=mr_sequence(ds) if ds.get("Modality") == "MR" else "",
            view=VIEWS.get(str(ds.get("ViewPosition", "")).upper(), ""),
            scanner=f"{ds.get('Manufacturer', '')} {ds.get('ManufacturerModelName', '')}".strip(),
            damage=_truncation(ds, path),
        )
    except (ValueError, TypeError) as e:
        raise ImageError(f"{path}: malformed DICOM header ({e})") from None


def _truncation(ds, path: Path) -> str:
    """'truncated file (...)' when the pixel data stops short of what the header declares."""
    from pydicom.uid import UID

    element = ds.get_item(0x7FE00010)
    if element is None:
        return ""
    if hasattr(element, "value_tell"):  # deferred: only its declared length was read
        if element.length != 0xFFFFFFFF and \
                element.value_tell + element.length > path.stat().st_size:
            return "truncated file (pixel data runs past the end of the file)"
        return ""
    syntax = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")
                     or "1.2.840.10008.1.2"))
    if syntax.is_compressed or element.value is None:
        return ""
    try:
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) *
                    int(ds.BitsAllocated) // 8 * int(ds.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError):
        return ""
    if len(element.value) < expected:
        return f"truncated file ({len(element.value)} of {expected} bytes of pixel data)"
    return ""


def _as_list(value) -> list:
    """A DICOM value as a list: multi-valued elements as they are, one value as one item."""
    if value is None or value == "":
        return []
    return [value] if isinstance(value, (str, int, float)) else list(value)


def _floats(value) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    return tuple(float(v) for v in _as_list(value))


def mr_sequence(ds) -> str:
    """T1, T2, STIR, FLAIR or PD from the series description, else from TR/TE; '' when unknown."""
    text = f"{ds.get('SeriesDescription', '')} {ds.get('ProtocolName', '')}".upper()
    for name in ("STIR", "FLAIR", "T1", "T2", "PD"):
        if name in text:
            return name
    try:
        tr, te = float(ds.RepetitionTime), float(ds.EchoTime)
    except (AttributeError, TypeError, ValueError):
        return ""
    if te >= 60 and tr >= 1500:
        return "T2"
    if te <= 30 and tr <= 1000:
        return "T1"
    return "PD" if te <= 30 else ""


def group_series(files: Iterable[DicomFile]) -> dict[str, list[DicomFile]]:
    """Files grouped by SeriesInstanceUID, in the order first seen."""
    groups: dict[str, list[DicomFile]] = defaultdict(list)
    for file in files:
        groups[file.series_uid].append(file)
    return dict(groups)


def series_problem(files: list[DicomFile]) -> str | None:
    """Why a series is not a spine image series to keep, or None when it is."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    first = files[0]
    sop_name = UID(first.sop_class).name
    damaged = [f for f in files if f.damage]
    if damaged:
        more = f" (and {len(damaged) - 1} more file(s))" if len(damaged) > 1 else ""
        return f"{damaged[0].path.name}: {damaged[0].damage}{more}"
    without = [f for f in files if not f.has_pixels]
    if len(without) == len(files):
        return f"not an image: {sop_name} without pixel data"
    if without:
        more = f" (and {len(without) - 1} more)" if len(without) > 1 else ""
        return (f"{len(without)} of {len(files)} files have no pixel data: "
                f"{without[0].path.name}{more}")
    if first.modality not in DICOM_MODALITIES:
        return (f"modality '{first.modality or '?'}' ({sop_name}) is not CT, MR or a "
                "radiograph (CR/DX)")
    if "LOCALIZER" in first.image_type:
        return "scout/localizer (ImageType LOCALIZER)"
    description = first.description.lower()
    words = [w for w in LOCALIZER_WORDS if w in description]
    if words:  # the description itself is not quoted: it may hold identifying text
        return f"scout/localizer (series description says '{words[0]}')"
    syntaxes = {f.transfer_syntax for f in files}
    for syntax in syntaxes:
        uid = UID(syntax or "1.2.840.10008.1.2")
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:
            available = False
        if not available:
            return (f"compressed as {uid.name} and no decoder for it is installed "
                    "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")
    return None


@dataclass
class SeriesVolume:
    """A series' volume and what was done to build it."""

    volume: Volume
    files: list[Path]
    notes: list[str]


def build_volume(files: list[DicomFile]) -> SeriesVolume:
    """Decode one kept series into a volume; raises SeriesError saying why it cannot be one."""
    notes: list[str] = []
    unique: dict[str, DicomFile] = {}
    for f in files:
        unique.setdefault(f.sop_instance_uid or str(f.path), f)
    if len(unique) < len(files):
        notes.append(f"{len(files) - len(unique)} duplicate instance(s) ignored")
    files = list(unique.values())
    modality = DICOM_MODALITIES[files[0].modality]
    if modality == "XR":
        if len(files) != 1 or files[0].frames != 1:
            raise SeriesError(f"radiograph series with {len(files)} files/"
                              f"{files[0].frames} frames; expected one single-frame image")
        return _radiograph(files[0], notes)
    if len(files) == 1 and files[0].frames > 1:
        return _multiframe(files[0], modality, notes)
    if len(files) == 1:
        raise SeriesError("series has a single slice; a volume needs at least two")
    if any(f.frames > 1 for f in files):
        raise SeriesError("series mixes several multi-frame files; expected one")
    return _slices(files, modality, notes)


def _dataset(file: DicomFile):
    import pydicom

    try:
        return pydicom.dcmread(file.path)
    except Exception as e:  # pydicom raises many types for broken files
        raise SeriesError(f"{file.path.name}: unreadable ({e})") from None


def _pixels(ds, name: str) -> np.ndarray:
    try:
        return ds.pixel_array.astype(np.float32)
    except Exception as e:  # decoders raise many types
        raise SeriesError(f"{name}: cannot decode pixel data ({str(e).splitlines()[0]})") from None


def _rescale(pixels: np.ndarray, item, modality: str) -> np.ndarray:
    """CT to HU with RescaleSlope/Intercept; MR kept in its units unless it says otherwise."""
    slope = float(item.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(item.get("RescaleIntercept", 0.0) or 0.0)
    return pixels * slope + intercept if modality == "CT" or "RescaleSlope" in item else pixels


def _affine(row: np.ndarray, col: np.ndarray, step: np.ndarray, spacing: tuple[float, float],
            first: np.ndarray) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]
    lps[:3, 1] = col * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = first
    return LPS_TO_RAS @ lps


def _check_positions(positions: np.ndarray, normal: np.ndarray, count: int) -> np.ndarray:
    """Sort order along the normal; raises on duplicate or uneven positions."""
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    if np.any(gaps <= 1e-3):
        raise SeriesError(f"{int(np.sum(gaps <= 1e-3)) + 1} slices share a position "
                          "(several volumes, echoes or phases in one series?)")
    if np.ptp(gaps) > 0.01 * gaps.mean() + 1e-3:
        raise SeriesError(f"uneven slice spacing ({gaps.min():.2f}-{gaps.max():.2f} mm "
                          f"over {count} slices: missing slices?)")
    return order


def _slices(files: list[DicomFile], modality: str, notes: list[str]) -> SeriesVolume:
    if any(f.position is None or f.orientation is None for f in files):
        raise SeriesError("slices without ImagePositionPatient/ImageOrientationPatient")
    orientation = np.array(files[0].orientation)
    if any(not np.allclose(f.orientation, orientation, atol=1e-4) for f in files):
        raise SeriesError("slices of one series have different orientations")
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    positions = np.array([f.position for f in files])
    order = _check_positions(positions, normal, len(files))
    ordered = [files[i] for i in order]
    planes, spacing, shape = [], None, None
    for f in ordered:
        ds = _dataset(f)
        pixels = _pixels(ds, f.path.name)
        if pixels.ndim != 2:
            raise SeriesError(f"{f.path.name}: expected a greyscale slice, got shape "
                              f"{pixels.shape}")
        this_spacing = tuple(float(v) for v in ds.get("PixelSpacing", []) or ())
        if len(this_spacing) != 2 or min(this_spacing) <= 0:
            raise SeriesError(f"{f.path.name}: no valid PixelSpacing")
        if shape is not None and (pixels.shape != shape or
                                  not np.allclose(this_spacing, spacing, rtol=1e-4)):
            raise SeriesError(f"{f.path.name}: slice size or pixel spacing differs from "
                              "the series' first slice")
        spacing, shape = this_spacing, pixels.shape
        planes.append(_rescale(pixels, ds, modality))
    first, last = positions[order[0]], positions[order[-1]]
    step = (last - first) / (len(ordered) - 1)
    array = np.stack(planes, axis=-1).transpose(1, 0, 2)
    return SeriesVolume(Volume(array, _affine(row, col, step, spacing, first), modality),
                        [f.path for f in ordered], notes)


def _frame_item(ds, index: int, group: str):
    """A frame's functional-group item: its per-frame one where present, else the shared one."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for item in (per_frame[index] if index < len(per_frame) else None,
                 shared[0] if shared else None):
        if item is not None and group in item and len(item[group].value):
            return item[group].value[0]
    return None


def _multiframe(file: DicomFile, modality: str, notes: list[str]) -> SeriesVolume:
    ds = _dataset(file)
    frames = file.frames
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != frames:
        raise SeriesError(f"{file.path.name}: multi-frame image without per-frame geometry "
                          "(PerFrameFunctionalGroupsSequence)")
    positions, rescales = [], []
    orientation = spacing = None
    for i in range(frames):
        position = _frame_item(ds, i, "PlanePositionSequence")
        plane = _frame_item(ds, i, "PlaneOrientationSequence")
        measures = _frame_item(ds, i, "PixelMeasuresSequence")
        if position is None or plane is None or measures is None:
            raise SeriesError(f"{file.path.name}: frame {i + 1} lacks plane position, "
                              "orientation or pixel spacing")
        this = np.array([float(v) for v in plane.ImageOrientationPatient])
        if orientation is not None and not np.allclose(this, orientation, atol=1e-4):
            raise SeriesError(f"{file.path.name}: frames have different orientations")
        orientation = this
        spacing = tuple(float(v) for v in measures.PixelSpacing)
        positions.append([float(v) for v in position.ImagePositionPatient])
        rescales.append(_frame_item(ds, i, "PixelValueTransformationSequence"))
    row, col = orientation[:3], orientation[3:]
    positions_array = np.array(positions)
    order = _check_positions(positions_array, np.cross(row, col), frames)
    pixels = _pixels(ds, file.path.name)
    planes = [_rescale(pixels[i], rescales[i] or ds, modality) for i in order]
    first, last = positions_array[order[0]], positions_array[order[-1]]
    step = (last - first) / (frames - 1)
    array = np.stack(planes, axis=-1).transpose(1, 0, 2)
    notes.append(f"enhanced multi-frame object, {frames} frames")
    return SeriesVolume(Volume(array, _affine(row, col, step, spacing, first), modality),
                        [file.path], notes)


def _radiograph(file: DicomFile, notes: list[str]) -> SeriesVolume:
    ds = _dataset(file)
    pixels = _pixels(ds, file.path.name)
    if pixels.ndim != 2:
        raise SeriesError(f"{file.path.name}: expected a greyscale radiograph, got shape "
                          f"{pixels.shape}")
    spacing = None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = [float(v) for v in ds.get(keyword, []) or ()]
        if len(values) == 2 and min(values) > 0:
            spacing = (values[0], values[1])
            break
    if spacing is None:
        spacing = (1.0, 1.0)
        notes.append("no pixel spacing in the header; 1 mm per pixel assumed")
    letters = [str(v).upper()[:1] for v in _as_list(ds.get("PatientOrientation", []))]
    if len(letters) != 2 or any(v not in _LETTERS for v in letters):
        letters = ["P", "F"] if file.view == "LAT" else ["L", "F"]
        notes.append(f"no PatientOrientation; assumed {'/'.join(letters)}")
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = pixels.max() - pixels
        notes.append("MONOCHROME1 inverted so that bone is bright")
    pixels = _rescale(pixels, ds, "XR")
    affine = radiograph_affine((letters[0], letters[1]), spacing)
    return SeriesVolume(Volume(pixels.T.copy(), affine, "XR"), [file.path], notes)


def radiograph_affine(letters: tuple[str, str], spacing: tuple[float, float]) -> np.ndarray:
    """RAS affine of a radiograph stored as array[column, row] (pixel_array transposed).

    ``letters`` is the DICOM PatientOrientation: where a step along a row, then
    down a column, points in the patient ('L', 'F' for a standard AP view);
    ``spacing`` is (row spacing, column spacing) in mm, as PixelSpacing.
    """
    row, col = (np.array(_LETTERS[v], dtype=float) for v in letters)
    return _affine(row, col, np.cross(row, col), spacing, np.zeros(3))


def scan_folder(folder: Path) -> tuple[dict[str, list[DicomFile]], list[tuple[Path, str]]]:
    """DICOM series under ``folder`` (recursively) and the files passed over, with reasons."""
    headers, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            headers.append(read_header(path))
        except ImageError as e:
            skipped.append((path, str(e).removeprefix(f"{path}: ")))
    return group_series(headers), skipped


def load_series(files: list[DicomFile]) -> SeriesVolume:
    """A kept series as a volume, with its files in slice order; raises SeriesError naming the
    series' folder and the reason."""
    problem = series_problem(files)
    where = files[0].path.parent
    if problem:
        raise SeriesError(f"{where}: {problem}")
    try:
        return build_volume(files)
    except SeriesError as e:
        raise SeriesError(f"{where}: {e}") from None


def load_folder(path: Path) -> Volume:
    """The one DICOM series a folder holds, as a volume (ImageError naming the folder
    otherwise)."""
    series, _ = scan_folder(path)
    if len(series) != 1:
        raise ImageError(f"{path}: expected one DICOM series, found {len(series)}")
    return load_series(next(iter(series.values()))).volume
