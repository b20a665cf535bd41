"""Header-only reading of one DICOM file and the skip reason when it is not part of an image volume.

Used by :func:`medad.io.find_series`. Never raises for a bad file: every problem becomes a ``(reason, detail)`` pair
with the reason codes listed in :mod:`medad.io.dicom_index`.
"""

from __future__ import annotations

import os
import re
import struct

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

__all__ = ["clean_message", "dcmread_any", "is_localizer", "read_header"]

_LOCALIZER_RE = re.compile(r"\b(localizer|localiser|scout|survey|topogram|3[- ]?plane|tri[- ]?pilot)\b", re.I)
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def _pixel_data_check(fp, ds, size: int) -> tuple[str, str] | None:
    """After a ``stop_before_pixels`` read, check that Pixel Data exists and is complete; return a skip reason."""
    pos = fp.tell()
    if pos >= size:
        return "no_pixel_data", ("the file has no Pixel Data: a header-only export or a placeholder instance "
                                 "(or a file cut exactly between two elements)")
    implicit, little = getattr(ds, "original_encoding", (False, True))
    ts = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    if implicit is None or ts == _DEFLATED:  # deflated: positions refer to the inflated stream
        return None
    head = fp.read(12)
    if len(head) < 8:
        return "truncated", f"file ends inside the Pixel Data header ({size} bytes)"
    end = "<" if little else ">"
    group, elem = struct.unpack(end + "HH", head[:4])
    if (group << 16 | elem) not in _PIXEL_TAGS:
        return None  # stopped for another reason (e.g. deflated encoding); the full read will tell
    if not implicit and head[4:6] not in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"):
        implicit = True  # writer switched to implicit VR (pydicom tolerates it, so do we)
    if implicit:
        (length,) = struct.unpack(end + "L", head[4:8])
        hdr = 8
    else:
        if len(head) < 12:
            return "truncated", f"file ends inside the Pixel Data header ({size} bytes)"
        (length,) = struct.unpack(end + "L", head[8:12])
        hdr = 12
    if length == 0xFFFFFFFF:  # encapsulated: ends with a Sequence Delimitation Item (maybe + trailing padding)
        fp.seek(max(size - 1024, pos))
        if fp.read().rfind(struct.pack(end + "HHL", 0xFFFE, 0xE0DD, 0)) < 0:
            return "truncated", "encapsulated Pixel Data has no sequence delimiter (file cut short)"
        return None
    if pos + hdr + length > size:
        return "truncated", f"Pixel Data needs {length} bytes but the file ends {size - pos - hdr} bytes after its start"
    need = int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * int(ds.get("SamplesPerPixel", 1)) \
        * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.get("BitsAllocated", 8)) // 8
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":  # chroma subsampled: 2 of 3 samples
        need = need * 2 // 3
    if length < need:
        return "truncated", f"Pixel Data holds {length} bytes, the header needs {need}"
    return None


def _cut_in_header(ds, size: int) -> tuple[str, str] | None:
    """pydicom stops silently at end of file: find a short last value or a partial element header after the last one.

    A file that ends cleanly after a complete element is not called truncated (a minimal or header-only object,
    e.g. pydicom's test files): the checks that follow give it its reason (``non_image``, ``no_pixel_data``).
    """
    meta = getattr(ds, "file_meta", None)
    elems = [*(meta.elements() if meta is not None else ()), *ds.elements()]
    for elem in elems:
        value, length = getattr(elem, "value", None), getattr(elem, "length", None)
        if isinstance(value, bytes) and length is not None and length != 0xFFFFFFFF and len(value) < length:
            return "truncated", f"file ends inside DICOM header element {elem.tag} ({size} bytes)"
    last = max(ds.elements(), key=lambda e: e.tag, default=None) if len(ds) else None
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is not None and length is not None and length != 0xFFFFFFFF and tell + length < size:
        return "truncated", f"file ends inside a DICOM element header after {tell + last.length} of {size} bytes"
    if len(ds) == 0:
        return "truncated", f"file ends before its data set ({size} bytes)"
    return None


def _is_image_sop(sop: str, ds) -> bool:
    name = UID(sop).name if sop else ""
    if name and name != sop:  # a known SOP class
        return "Image Storage" in name
    return "Rows" in ds and "Columns" in ds  # private/unknown SOP class: trust the image attributes


def _raw_dicom_start(fp) -> bool:
    """True when a file without the Part-10 preamble starts like a bare DICOM data set (a group 0002 or 0008 tag,
    little or big endian)."""
    fp.seek(0)
    head = fp.read(4)
    fp.seek(0)
    return len(head) == 4 and (struct.unpack("<H", head[:2])[0] in (0x0002, 0x0008)
                               or struct.unpack(">H", head[:2])[0] in (0x0002, 0x0008))


_MAGIC = ((b"PK\x03\x04", "a ZIP archive (unpack it to score what it holds)"),
          (b"\x1f\x8b", "a gzip file (unpack it to score what it holds)"),
          (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive (unpack it to score what it holds)"),
          (b"%PDF", "a PDF document"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"),
          (b"GIF8", "a GIF image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
          (b"BM", "a BMP image"), (b"<?xml", "an XML file"), (b"{", "a JSON or text file"),
          (b"\x00\x05\x16\x07", "a macOS AppleDouble file (resource fork of a copied file)"))


def _what_is(fp) -> str:
    """A short description of a non-DICOM file from its first bytes (no file names)."""
    fp.seek(0)
    head = fp.read(512)
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "a tar archive (unpack it to score what it holds)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return "an unknown binary file"


def dcmread_any(path, **kwargs):
    """``pydicom.dcmread`` that also accepts bare data sets without preamble (old ACR-NEMA style PACS exports) and
    fills in a missing TransferSyntaxUID from the detected encoding so pixel data can be decoded."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True, **kwargs)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def read_header(path: str):
    """``(dataset, None)`` for an image file with complete pixel data, else ``(dataset or None, (reason, detail))``.

    The data set comes back with a reason too when the header could be read (a non-image object, a localizer-free
    header-only file, ...), so the index knows which series the file belongs to. Never raises for bad files, and
    messages hold no object addresses (tables must not change between identical runs).
    """
    ds = None
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            except InvalidDicomError:
                if not _raw_dicom_start(fp):
                    return None, ("not_dicom", f"not DICOM and not a NIfTI, NRRD or MHA image: {_what_is(fp)}")
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
                if "SOPClassUID" not in ds:
                    return None, ("not_dicom", f"not DICOM and not a NIfTI, NRRD or MHA image: {_what_is(fp)}")
            meta = getattr(ds, "file_meta", None) or {}
            meta_sop = str(meta.get("MediaStorageSOPClassUID", ""))
            if meta_sop == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in ds:
                return None, ("dicomdir", "DICOMDIR index file; its images are indexed from their own files")
            if str(meta.get("TransferSyntaxUID", "")) == _DEFLATED:
                return _deflated(path, ds)
            if fp.tell() >= size and (cut := _cut_in_header(ds, size)):
                return ds, cut
            sop = str(ds.get("SOPClassUID", meta_sop))
            if not _is_image_sop(sop, ds):
                what = UID(sop).name if sop and UID(sop).name != sop else (
                    "unknown SOP class" if sop else "no SOP Class UID and no image attributes")
                return ds, ("non_image", f"{what} ({ds.get('Modality', '?') or '?'})")
            bad = _pixel_data_check(fp, ds, size)
            if bad is None and not all(k in ds for k in ("Rows", "Columns", "BitsAllocated")):
                bad = ("unreadable", "image with Pixel Data but without Rows, Columns or BitsAllocated")
    except (EOFError, struct.error) as e:
        return None, ("truncated", f"file ends inside the DICOM header ({type(e).__name__})")
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the index
        msg = clean_message(str(e).split("\n")[0], path)[:200]
        if any(k in msg.lower() for k in ("end of file", "eof", "truncat", "no tag to read")):
            return None, ("truncated", f"file ends inside the DICOM header: {msg}")
        return None, ("unreadable", f"{type(e).__name__}: {msg}")
    return ds, bad


def _deflated(path: str, ds):
    """Deflated Explicit VR Little Endian: pydicom inflates the whole data set; keep it if it holds Pixel Data."""
    full = pydicom.dcmread(path, force=True)
    if not _is_image_sop(str(full.get("SOPClassUID", "")), full):
        return ds, ("non_image", f"{UID(str(full.get('SOPClassUID', ''))).name or 'unknown SOP class'} "
                                 f"({full.get('Modality', '?')})")
    if "PixelData" not in full:
        return ds, ("no_pixel_data", "the deflated data set has no Pixel Data")
    del full.PixelData
    return full, None


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{8,}")
_PIDS = re.compile(r"\bpid(\(s\))? [\d, ]+\d|\.tmp-[\w-]+")


_FILE_OBJECT = re.compile(r"<_io\.\w+ name=(?:'[^']*'|\"[^\"]*\"|\d+)>")


def clean_message(msg: str, path: str | os.PathLike | None = None) -> str:
    """``msg`` on one line without what changes between identical runs or names the input: object addresses
    (``<_io.BytesIO object at 0x7f..>``), file objects with their names, process ids, temporary-file names, and
    ``path`` (a file or folder name may hold a patient's name)."""
    msg = " ".join(str(msg).split())
    if path:
        for p in sorted({os.fspath(path), os.path.abspath(os.fspath(path))}, key=len, reverse=True):
            msg = msg.replace(p, "<file>")
    msg = _FILE_OBJECT.sub("<file>", _ADDRESS.sub("", msg))
    return _PIDS.sub(lambda m: "pid N" if m.group(0).startswith("pid") else ".tmp", msg)


def is_localizer(ds) -> bool:
    image_type = [str(t).upper() for t in (ds.get("ImageType") or [])]
    return "LOCALIZER" in image_type or bool(_LOCALIZER_RE.search(str(ds.get("SeriesDescription", "") or "")))
