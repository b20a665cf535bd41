"""Why a DICOM image is not a slice of a volume to score: localizers, projections, colour, cine, missing UIDs,
missing or degenerate geometry. Pure functions of a file's header values, cached per series (a series repeats
them), shared by the lean reader and the pydicom fallback through :func:`medad.io.dicom_index.headers.summarize`.
"""

from __future__ import annotations

import functools
import math
import re

__all__ = ["bad_geometry", "classify", "is_localizer_values"]

_UNIT_TOL = 1e-3  # |row|, |column| within 1e-3 of 1 and row.column within 1e-3 of 0, else the orientation is degenerate
_PROJECTION_MODALITIES = {"CR": "computed radiography", "DX": "digital radiography", "MG": "mammography",
                          "XA": "X-ray angiography", "RF": "radiofluoroscopy", "IO": "intra-oral radiography",
                          "PX": "panoramic X-ray"}
_PROJECTION_TYPES = {"PROJECTION IMAGE", "MIP", "MINIP", "MAXIP", "MAX_IP", "MIN_IP", "VOLUME RENDER",
                     "VOLUME_RENDER", "VOLUME RENDERING", "SSD", "SURFACE RENDERING"}
_PROJECTION_RE = re.compile(r"(?<![a-z0-9])(mip|minip|maxip|mip[ _-]?\w*|vrt|volume[ _-]?render\w*|projection)"
                            r"(?![a-z0-9])", re.I)


def _int(v, default: int = 0) -> int:
    try:
        return int(float(v[0])) if v else default
    except (TypeError, ValueError):
        return default


def is_localizer_values(values: dict) -> bool:
    return _is_localizer(tuple(values.get("ImageType") or ()), " ".join(values.get("SeriesDescription") or ()))


@functools.lru_cache(maxsize=4096)
def _is_localizer(image_type: tuple, desc: str) -> bool:
    from .._header import is_localizer

    image_type = tuple(t.upper() for t in image_type)
    return "LOCALIZER" in image_type or is_localizer({"ImageType": list(image_type), "SeriesDescription": desc})


def classify(h, values: dict) -> tuple[str, str] | None:
    """Why an image file with complete pixel data is not a slice of a volume to score, or None."""
    why = _classify_kind(tuple(values.get("ImageType") or ()), h.description, h.modality, bool(h.series),
                         h.multiframe, h.frames, _int(values.get("SamplesPerPixel"), 1),
                         (values.get("PhotometricInterpretation") or ("",))[0].upper(), h.rows, h.cols)
    if why is not None or h.multiframe:
        return why or None
    if h.iop is None or h.ipp is None or h.spacing is None:
        return "no_geometry", ("no ImagePositionPatient, ImageOrientationPatient or PixelSpacing: not part of a volume "
                               "(2D image or secondary capture)")
    if not all(math.isfinite(v) for v in h.ipp):
        return "bad_geometry", "ImagePositionPatient is not a finite number"
    return bad_geometry(h.iop, h.ipp, h.spacing)


@functools.lru_cache(maxsize=4096)
def _classify_kind(image_type: tuple, description: str, modality: str, has_series: bool, multiframe: bool,
                   frames: int, spp: int, pi: str, rows: int, cols: int) -> tuple[str, str] | None:
    """The part of :func:`classify` that depends on per-series attributes only (cached: a series repeats them)."""
    image_type = tuple(t.upper() for t in image_type)
    if _is_localizer(image_type, description):
        shown = " ".join(image_type) or "-"
        return "localizer", f"localizer or scout image (ImageType {shown})"
    if modality.upper() in _PROJECTION_MODALITIES:
        return "projection", (f"{_PROJECTION_MODALITIES[modality.upper()]} ({modality}): a 2D projection image, "
                              "not a cross-sectional volume")
    hit = next((t for t in image_type if t in _PROJECTION_TYPES), None) or (
        m.group(1) if (m := _PROJECTION_RE.search(description)) else None)
    if hit:
        return "projection", (f"a projection / rendering ({hit.upper()}: MIP, MinIP or volume rendering), "
                              "not a cross-sectional volume")
    if not has_series:
        return "missing_uid", ("no SeriesInstanceUID: which series the image belongs to is unknown; "
                               "re-export with UIDs (an anonymizer may have removed them)")
    if multiframe:
        return None  # geometry from the functional groups, checked when loading
    if frames > 1:
        return "unsupported", "multi-frame object without functional-group geometry (cine, NM or US)"
    if spp != 1 or pi == "PALETTE COLOR":
        return "unsupported", f"colour image ({pi or '?'}, {spp} samples per pixel): only grayscale volumes are scored"
    if rows <= 0 or cols <= 0:
        return "unreadable", f"an image of {cols}x{rows} pixels"
    return None


def bad_geometry(iop, ipp, spacing) -> tuple[str, str] | None:
    """``("bad_geometry", why)`` for degenerate ImageOrientationPatient / non-finite positions / spacing <= 0."""
    if not all(math.isfinite(v) for v in ipp):
        return "bad_geometry", "ImagePositionPatient is not a finite number"
    return _bad_plane(tuple(iop), tuple(spacing))


@functools.lru_cache(maxsize=4096)
def _bad_plane(iop: tuple, spacing: tuple) -> tuple[str, str] | None:
    if not all(math.isfinite(v) for v in (*iop, *spacing)):
        return "bad_geometry", "ImageOrientationPatient or PixelSpacing is not a finite number"
    r, c = iop[:3], iop[3:]
    dot = r[0] * c[0] + r[1] * c[1] + r[2] * c[2]
    if abs(math.hypot(*r) - 1) > _UNIT_TOL or abs(math.hypot(*c) - 1) > _UNIT_TOL or abs(dot) > _UNIT_TOL:
        shown = ", ".join(f"{v:g}" for v in iop)
        return "bad_geometry", (f"ImageOrientationPatient ({shown}) is degenerate (row and column directions must be "
                                "orthogonal unit vectors): the slice plane is undefined")
    if min(spacing) <= 0:
        return "bad_geometry", f"PixelSpacing ({spacing[0]:g}, {spacing[1]:g}) is not positive"
    return None
