"""One file -> one :class:`Header`: the few tags indexing needs, and the reason when the file is not a volume slice.

:func:`read_one` never raises and never reads pixel data. A DICOM file is first parsed by a lean reader
(:func:`lean_values`): one ``read`` of the first 64 KiB, a walk over the element headers of the file meta and the
data set (values of unneeded elements and sequences are skipped by their lengths, never decoded), and a check that the
Pixel Data element is complete. It takes only the common, well-formed case (Part-10 file, little-endian transfer
syntax, a plain character set, an image SOP class with complete Pixel Data). Anything else (no preamble, big endian,
deflated, other character sets, non-image objects, a cut or odd file) goes to pydicom
(:func:`medad.io._header.read_header`), which finds the reason. Both paths fill the same :class:`Header` through
:func:`summarize`, so the result does not depend on which one read the file.
"""

from __future__ import annotations

import functools
import struct
import sys
from typing import NamedTuple, Optional

from .classify import classify

__all__ = ["Header", "ORIENTATION_TOL", "SPLIT_TAGS", "lean_values", "summarize", "values_from_dataset"]

#: ImageOrientationPatient values within this (per component) are one orientation, when grouping and when loading.
ORIENTATION_TOL = 1e-4

class Header(NamedTuple):
    """What indexing knows about one file (small, picklable). ``reason`` is empty for a usable volume slice."""

    path: str
    size: int
    reason: str = ""
    detail: str = ""
    kind: str = "dicom"               # "dicom" | "nifti" | "itk"
    study: str = ""
    series: str = ""
    sop: str = ""
    sop_class: str = ""
    modality: str = ""
    body_part: str = ""
    description: str = ""
    series_number: Optional[int] = None
    frame_of_reference: str = ""
    iop: Optional[tuple] = None       # 6 floats
    ipp: Optional[tuple] = None       # 3 floats
    spacing: Optional[tuple] = None   # PixelSpacing (row, column)
    rows: int = 0
    cols: int = 0
    frames: int = 1
    multiframe: bool = False          # enhanced / legacy-converted: functional groups present
    split: tuple = ()                 # (AcquisitionNumber, EchoNumbers, TemporalPositionIdentifier, TriggerTime,
                                      #  DiffusionBValue, ImageType) as normalized strings
    shape: tuple = ()                 # NIfTI/ITK: (X, Y, Z)
    data_files: tuple = ()            # ITK detached headers (.mhd/.nhdr): their data files


SPLIT_TAGS = ("AcquisitionNumber", "EchoNumbers", "TemporalPositionIdentifier", "TriggerTime", "DiffusionBValue",
              "ImageType")

# tag -> (keyword, VR used when the transfer syntax is implicit)
_TAGS = {
    0x00020002: ("MediaStorageSOPClassUID", "UI"), 0x00020010: ("TransferSyntaxUID", "UI"),
    0x00041220: ("DirectoryRecordSequence", "SQ"), 0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080008: ("ImageType", "CS"), 0x00080016: ("SOPClassUID", "UI"), 0x00080018: ("SOPInstanceUID", "UI"),
    0x00080060: ("Modality", "CS"), 0x0008103E: ("SeriesDescription", "LO"), 0x00180015: ("BodyPartExamined", "CS"),
    0x00180086: ("EchoNumbers", "IS"), 0x00181060: ("TriggerTime", "DS"), 0x00189087: ("DiffusionBValue", "FD"),
    0x0020000D: ("StudyInstanceUID", "UI"), 0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"), 0x00200012: ("AcquisitionNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"), 0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200052: ("FrameOfReferenceUID", "UI"), 0x00200100: ("TemporalPositionIdentifier", "IS"),
    0x00280002: ("SamplesPerPixel", "US"), 0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"), 0x00280010: ("Rows", "US"), 0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"), 0x00280100: ("BitsAllocated", "US"),
    0x52009229: ("SharedFunctionalGroupsSequence", "SQ"), 0x52009230: ("PerFrameFunctionalGroupsSequence", "SQ"),
}
KEYWORDS = tuple(kw for kw, _ in _TAGS.values())
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PLAIN_CHARSETS = {"", "ISO_IR 100", "ISO_IR 6", "ISO 2022 IR 6", "ISO_IR 192"}
_IMPLICIT_LE, _EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
_DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"}
_UNDEFINED = 0xFFFFFFFF
_CHUNK = 65536
_MAX_VALUE = 1 << 20  # a needed value longer than this is not plausible: let pydicom look


class _Fallback(Exception):
    """The lean reader does not handle this file: pydicom reads it."""


class _Buffer:
    """Forward-only window on a file: ``get(pos, n)`` reads more only when ``pos + n`` is past the window."""

    def __init__(self, fh, size: int):
        self.fh, self.size, self.base = fh, size, 0
        self.data = fh.read(_CHUNK)

    def get(self, pos: int, n: int) -> bytes:
        if pos + n > self.size:
            raise _Fallback
        end = self.base + len(self.data)
        if pos < self.base or pos + n > end:
            self.fh.seek(pos)
            self.base, self.data = pos, self.fh.read(max(n, _CHUNK))
        return self.data[pos - self.base: pos - self.base + n]


def _element(buf: _Buffer, pos: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
    """``(tag, VR or None, value length, value offset)`` of the element header at ``pos`` (little endian)."""
    head = buf.get(pos, 8)
    group, elem = struct.unpack_from("<HH", head)
    tag = group << 16 | elem
    if group == 0xFFFE or not explicit:
        return tag, None, struct.unpack_from("<L", head, 4)[0], pos + 8
    vr = head[4:6]
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Fallback  # not an explicit VR (a writer that switched encodings): pydicom copes
    if vr in _LONG_VRS:
        return tag, vr, struct.unpack_from("<L", buf.get(pos + 8, 4))[0], pos + 12
    return tag, vr, struct.unpack_from("<H", head, 6)[0], pos + 8


def _skip_items(buf: _Buffer, pos: int, explicit: bool, depth: int) -> int:
    """Skip the items of an undefined-length sequence starting at ``pos``; returns the offset after it."""
    if depth > 32:
        raise _Fallback
    while True:
        tag, _, length, pos = _element(buf, pos, explicit)
        if tag == 0xFFFEE0DD:
            return pos
        if tag != 0xFFFEE000:
            raise _Fallback
        pos = _skip_dataset(buf, pos, explicit, depth + 1) if length == _UNDEFINED else pos + length


def _skip_dataset(buf: _Buffer, pos: int, explicit: bool, depth: int) -> int:
    """Skip an undefined-length item's data set; returns the offset after its Item Delimitation Item."""
    while True:
        tag, vr, length, pos = _element(buf, pos, explicit)
        if tag == 0xFFFEE00D:
            return pos
        if length == _UNDEFINED:
            pos = _skip_items(buf, pos, explicit and vr != b"UN", depth + 1)
        else:
            pos += length


def _value(raw: bytes, vr: str) -> tuple[str, ...]:
    if vr == "US":
        return tuple(str(v) for v in struct.unpack(f"<{len(raw) // 2}H", raw[: len(raw) // 2 * 2]))
    if vr == "FD":
        return tuple(repr(v) for v in struct.unpack(f"<{len(raw) // 8}d", raw[: len(raw) // 8 * 8]))
    return raw  # text: decoded at the end, with the character set


_HH, _H, _L = struct.Struct("<HH"), struct.Struct("<H"), struct.Struct("<L")
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
              b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}


def lean_values(path: str, size: int) -> dict:
    """The needed values of a well-formed Part-10 image file, or :class:`_Fallback`.

    One ``read`` of the first 64 KiB; the element headers are walked in that buffer (a tight loop: tag, VR, length,
    skip), values are kept only for the needed tags. A header longer than the buffer is walked through a window that
    reads further (:class:`_Buffer`).
    """
    with open(path, "rb") as fh:
        buf = _Buffer(fh, size)
        data = buf.data
        if len(data) < 140 or data[128:132] != b"DICM":
            raise _Fallback
        n, pos, raw = len(data), 132, {}
        unpack_h, unpack_l, unpack_hh = _H.unpack_from, _L.unpack_from, _HH.unpack_from
        while pos + 8 <= n and data[pos] == 2 and data[pos + 1] == 0:  # file meta: group 0002, explicit VR LE
            elem, vr = unpack_h(data, pos + 2)[0], data[pos + 4: pos + 6]
            if vr in _LONG_VRS:
                length, vpos = unpack_l(data, pos + 8)[0], pos + 12
            else:
                length, vpos = unpack_h(data, pos + 6)[0], pos + 8
            if elem in (0x0002, 0x0010):
                raw["MediaStorageSOPClassUID" if elem == 0x0002 else "TransferSyntaxUID"] = data[vpos: vpos + length]
            pos = vpos + length
        ts = _text(raw.get("TransferSyntaxUID", b""))
        if ts == _EXPLICIT_BE or ts in _DEFLATED or not ts or pos + 8 > n:
            raise _Fallback
        explicit = ts != _IMPLICIT_LE
        get, long_vrs, short_vrs = _TAGS.get, _LONG_VRS, _SHORT_VRS
        while True:
            if pos + 12 > n:  # past the first read: continue through the window
                return _lean_window(buf, raw, pos, explicit, size)
            group, elem = unpack_hh(data, pos)
            tag = group << 16 | elem
            if explicit:
                vr = data[pos + 4: pos + 6]
                if vr in long_vrs:
                    length, vpos = unpack_l(data, pos + 8)[0], pos + 12
                elif vr in short_vrs:
                    length, vpos = unpack_h(data, pos + 6)[0], pos + 8
                else:
                    raise _Fallback  # not an explicit VR (a writer that switched encodings): pydicom copes
            else:
                vr, length, vpos = None, unpack_l(data, pos + 4)[0], pos + 8
            if group == 0x7FE0 and elem >= 0x0008:
                if elem != 0x0010:
                    raise _Fallback
                _check_pixels(buf, raw, vpos, length, size)
                return raw
            if length == _UNDEFINED:
                known = get(tag)
                if known is not None:
                    raw[known[0]] = ("1",)
                pos = _skip_items(buf, vpos, explicit and vr != b"UN", 1)
                continue
            known = get(tag)
            if known is not None:
                if known[1] == "SQ":
                    raw[known[0]] = ("1",)
                else:
                    _keep(raw, known, vr, data[vpos: vpos + length] if vpos + length <= n else buf.get(vpos, length))
            pos = vpos + length


def _keep(raw: dict, known: tuple[str, str], vr: bytes | None, value: bytes) -> None:
    kw, kind = known
    if kind == "SQ":
        raw[kw] = ("1",)
        return
    if len(value) > _MAX_VALUE or (vr is not None and kind in ("US", "FD") and vr.decode() != kind):
        raise _Fallback
    raw[kw] = _value(value, kind) if kind in ("US", "FD") else value


def _lean_window(buf: _Buffer, raw: dict, pos: int, explicit: bool, size: int) -> dict:
    """The rest of :func:`lean_values` for headers longer than the first read."""
    while True:
        if pos == size:
            raise _Fallback  # no Pixel Data: pydicom tells why
        tag, vr, length, vpos = _element(buf, pos, explicit)
        if tag >> 16 == 0x7FE0 and tag & 0xFFFF >= 0x0008:
            if tag != 0x7FE00010:
                raise _Fallback
            _check_pixels(buf, raw, vpos, length, size)
            return raw
        if length == _UNDEFINED:
            if tag in _TAGS:
                raw[_TAGS[tag][0]] = ("1",)
            pos = _skip_items(buf, vpos, explicit and vr != b"UN", 1)
            continue
        if tag in _TAGS:
            _keep(raw, _TAGS[tag], vr, buf.get(vpos, length) if _TAGS[tag][1] != "SQ" else b"")
        pos = vpos + length


def _text(v) -> str:
    return v.decode("latin-1").strip(" \x00") if isinstance(v, bytes) else ""


def _check_pixels(buf: _Buffer, raw: dict, vpos: int, length: int, size: int) -> None:
    """Complete Pixel Data of an image SOP class with the image attributes, else :class:`_Fallback`."""
    charset = _text(raw.get("SpecificCharacterSet", b"")).split("\\")[-1].strip()
    if charset not in _PLAIN_CHARSETS:
        raise _Fallback
    enc = "utf-8" if charset == "ISO_IR 192" else "latin-1"
    for kw, v in list(raw.items()):
        if isinstance(v, bytes):
            try:
                text = v.decode(enc)
            except UnicodeDecodeError:
                raise _Fallback from None
            raw[kw] = tuple([p.strip(" \x00") for p in text.split("\\")])
    if not all(k in raw for k in ("Rows", "Columns", "BitsAllocated")):
        raise _Fallback
    sop = (raw.get("SOPClassUID") or raw.get("MediaStorageSOPClassUID") or ("",))[0]
    if not _is_image_sop(sop, raw):
        raise _Fallback
    if length == _UNDEFINED:  # encapsulated: must end with a Sequence Delimitation Item (maybe padded)
        start = max(vpos, size - 1024)
        if buf.get(start, size - start).rfind(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") < 0:
            raise _Fallback
        return
    frames = _int(raw.get("NumberOfFrames"), 1) or 1
    need = (_int(raw["Rows"]) * _int(raw["Columns"]) * _int(raw.get("SamplesPerPixel"), 1) * frames
            * _int(raw["BitsAllocated"]) // 8)
    if str(raw.get("PhotometricInterpretation", ("",))[0]) == "YBR_FULL_422":
        need = need * 2 // 3
    if vpos + length > size or length < need:
        raise _Fallback


@functools.lru_cache(maxsize=256)
def _sop_kind(sop: str) -> bool | None:
    """True for a known image SOP class, False for a known other one, None when unknown."""
    from pydicom.uid import UID

    name = UID(sop).name if sop else ""
    return ("Image Storage" in name) if name and name != sop else None


def _is_image_sop(sop: str, values) -> bool:
    kind = _sop_kind(sop)
    if kind is not None:
        return kind
    return "Rows" in values and "Columns" in values  # private/unknown SOP class: trust the image attributes


def _int(v, default: int = 0) -> int:
    try:
        return int(float(v[0])) if v else default
    except (TypeError, ValueError):
        return default


def _floats(v, n: int) -> Optional[tuple]:
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


@functools.lru_cache(maxsize=4096)
def _norm(v) -> str:
    """A split-tag value as a canonical string (numbers formatted one way, whichever reader read them)."""
    if not v:
        return ""
    parts = []
    for p in v:
        try:
            parts.append(f"{float(p):.6g}")
        except ValueError:
            parts.append(p.upper())
    return sys.intern("\\".join(parts))


def values_from_dataset(ds) -> dict:
    """The needed values of a pydicom data set, as the lean reader returns them (tuples of stripped strings)."""
    out = {}
    meta = getattr(ds, "file_meta", None)
    for tag, (kw, vr) in _TAGS.items():
        src = meta if tag >> 16 == 0x0002 else ds
        if src is None or kw not in src:
            continue
        if vr == "SQ":
            out[kw] = ("1",)
            continue
        v = src[kw].value
        if v is None or v == "":
            out[kw] = ()
            continue
        items = list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v]
        out[kw] = tuple(str(x).strip(" \x00") for x in items)
    return out


def _intern(s: str) -> str:
    return sys.intern(s) if s else ""


def summarize(path: str, size: int, values: dict, reason: str = "", detail: str = "") -> Header:
    """Build the :class:`Header` of a DICOM file from its values; classify it unless a reason is given."""
    def s(kw: str) -> str:
        v = values.get(kw) or ()
        return "\\".join(v) if kw == "ImageType" else (v[0] if v else "")

    sn = s("SeriesNumber")
    try:
        series_number = int(float(sn)) if sn else None
    except ValueError:
        series_number = None
    h = Header(
        path=path, size=size, reason=reason, detail=detail,
        study=_intern(s("StudyInstanceUID")), series=_intern(s("SeriesInstanceUID")), sop=s("SOPInstanceUID"),
        sop_class=_intern(s("SOPClassUID") or s("MediaStorageSOPClassUID")), modality=_intern(s("Modality")),
        body_part=_intern(s("BodyPartExamined")), description=_intern(s("SeriesDescription")),
        series_number=series_number, frame_of_reference=_intern(s("FrameOfReferenceUID")),
        iop=_floats(values.get("ImageOrientationPatient"), 6), ipp=_floats(values.get("ImagePositionPatient"), 3),
        spacing=_floats(values.get("PixelSpacing"), 2), rows=_int(values.get("Rows")),
        cols=_int(values.get("Columns")), frames=_int(values.get("NumberOfFrames"), 1) or 1,
        multiframe=bool(values.get("PerFrameFunctionalGroupsSequence") or values.get(
            "SharedFunctionalGroupsSequence")),
        split=tuple([_norm(tuple(values.get(k) or ())) for k in SPLIT_TAGS]))
    if reason:
        return h
    why = classify(h, values)
    return h._replace(reason=why[0], detail=why[1]) if why else h
