"""Header checks of NIfTI / NRRD / MHA files at indexing time, before anything is allocated.

:func:`volume_header` reads only the header and bounds what loading may allocate: a file whose header declares more
data than it can hold (a 79-byte ``.nii.gz`` declaring 2048x2048x512 voxels) is ``truncated``, a volume over
:func:`max_voxels` is ``too_large``; a singular affine is ``bad_geometry``; 4D files with several volumes and colour
or vector images are ``unsupported``; a NIfTI whose intent is "label" is a ``label_map``.
"""

from __future__ import annotations

import os
import re

import numpy as np

from .headers import Header

__all__ = ["max_voxels", "volume_header"]

_DEFLATE_MAX_RATIO = 1032   # deflate cannot compress better than ~1032:1
_NIFTI_INTENT_LABEL = 1002


def max_voxels() -> int:
    """The largest volume (voxels) medad loads: ``MEDAD_MAX_VOXELS`` or 2**30 (4 GiB as float32)."""
    try:
        return int(float(os.environ.get("MEDAD_MAX_VOXELS", 1 << 30)))
    except ValueError:
        return 1 << 30


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{int(n)} bytes"


def too_large(shape) -> tuple[str, str] | None:
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if n > max_voxels():
        dims = "x".join(str(int(s)) for s in shape)
        return "too_large", (f"{dims} = {n:.3g} voxels is over the limit of {max_voxels():.3g} "
                             "(MEDAD_MAX_VOXELS): crop or split it, or raise the limit if memory allows")
    return None


def _singular(affine: np.ndarray) -> bool:
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.all(np.isfinite(m)):
        return True
    norms = np.linalg.norm(m, axis=0)
    return bool(norms.min() <= 1e-8 or abs(np.linalg.det(m)) <= 1e-6 * float(np.prod(norms)))


def _nifti(path: str, size: int) -> tuple[tuple, tuple[str, str] | None]:
    import nibabel as nib

    img = nib.load(path)
    hdr = img.header
    shape = tuple(int(s) for s in hdr.get_data_shape())
    dtype = hdr.get_data_dtype()
    dims = "x".join(map(str, shape))
    if dtype.fields is not None or dtype.kind == "c":
        return shape, ("unsupported", f"{dtype} voxels (colour, vector or complex): only grayscale volumes are scored")
    extra = shape[3:]
    if any(s > 1 for s in extra):
        return shape, ("unsupported", f"{len(shape)}D image {dims}: {int(np.prod(extra))} volumes in one file; split "
                                      "it into 3D volumes first")
    vox = shape[:3] + (1,) * (3 - len(shape[:3]))
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize + int(hdr.get_data_offset())
    if path.lower().endswith(".gz"):
        room, how = _gzip_room(path, size, nbytes)
    else:
        room, how = size, "the file has"
    if nbytes > room:
        return vox, ("truncated", f"the header declares {dims} {dtype} voxels ({_gib(nbytes)}) but {how} "
                                  f"{_gib(room)}: damaged or cut short")
    if (big := too_large(vox)) is not None:
        return vox, big
    if _singular(img.affine):
        return vox, ("bad_geometry", "the NIfTI affine (sform or qform) is singular: a zero voxel size or collinear "
                                     "axes; fix the header (e.g. pixdim) before scoring")
    if int(hdr.get("intent_code", 0)) == _NIFTI_INTENT_LABEL:
        return vox, ("label_map", "NIfTI intent 'label': a label or mask volume, not an image to score")
    return vox, None


def _gzip_room(path: str, size: int, nbytes: int) -> tuple[int, str]:
    """An upper bound of the decompressed size of a gzip file: the best deflate ratio, and its ISIZE trailer (the
    decompressed size modulo 4 GiB, so only when less than 4 GiB is expected)."""
    bound = size * _DEFLATE_MAX_RATIO + 1024
    if nbytes < 1 << 32 and size >= 18:
        with open(path, "rb") as fh:
            fh.seek(size - 4)
            isize = int.from_bytes(fh.read(4), "little")
        if isize < bound:
            return isize, f"the {size}-byte gzip file decompresses to"
    return bound, f"a {size}-byte gzip file holds at most"


_ITK_FIELDS = re.compile(r"^\s*(DimSize|ElementType|ElementDataFile|CompressedData|ElementNumberOfChannels|sizes|type"
                         r"|encoding|data file|datafile|dimension)\s*[:=]\s*(.*?)\s*$", re.I | re.M)
_ITK_BYTES = {"uchar": 1, "char": 1, "unsigned char": 1, "signed char": 1, "int8": 1, "uint8": 1, "short": 2,
              "ushort": 2, "unsigned short": 2, "int16": 2, "uint16": 2, "int": 4, "uint": 4, "unsigned int": 4,
              "int32": 4, "uint32": 4, "float": 4, "double": 8, "long": 8, "ulong": 8, "int64": 8, "uint64": 8,
              "met_uchar": 1, "met_char": 1, "met_short": 2, "met_ushort": 2, "met_int": 4, "met_uint": 4,
              "met_float": 4, "met_double": 8, "met_long": 8, "met_ulong": 8}


def _itk_text(path: str, size: int) -> tuple[dict, int]:
    """The key/value header fields of an MHA/MHD/NRRD/NHDR file and the header's byte length."""
    with open(path, "rb") as fh:
        head = fh.read(min(size, 65536))
    if path.lower().endswith((".nrrd", ".nhdr")):
        end = head.find(b"\n\n")
        text_end = end + 2 if end >= 0 else len(head)
    else:
        m = re.search(rb"ElementDataFile\s*=\s*[^\n]*\n", head)
        text_end = m.end() if m else len(head)
    text = head[:text_end].decode("latin-1")
    return {k.lower(): v for k, v in _ITK_FIELDS.findall(text)}, text_end


def _itk(path: str, size: int) -> tuple[tuple, tuple[str, str] | None, tuple]:
    fields, header_len = _itk_text(path, size)
    dims = fields.get("dimsize") or fields.get("sizes") or ""
    shape = tuple(int(v) for v in dims.split()) if dims else ()
    data_file = fields.get("elementdatafile") or fields.get("data file") or fields.get("datafile") or ""
    data_files = ()
    if data_file and data_file.upper() not in ("LOCAL", "LIST") and not data_file.upper().startswith("LIST"):
        data_files = (os.path.normpath(os.path.join(os.path.dirname(path), data_file.split()[0])),)
    if len(shape) > 3 and any(s > 1 for s in shape[3:]):
        return shape, ("unsupported", f"{len(shape)}D image {'x'.join(map(str, shape))}: split it into 3D volumes"), \
            data_files
    channels = int(fields.get("elementnumberofchannels", "1") or 1)
    vox = shape[:3] + (1,) * (3 - len(shape[:3])) if shape else ()
    if channels != 1:
        return vox, ("unsupported", f"{channels} components per voxel (colour or vector): only grayscale volumes are "
                                    "scored"), data_files
    if vox and (big := too_large(vox)) is not None:
        return vox, big, data_files
    raw = fields.get("compresseddata", "false").lower() != "true" and fields.get("encoding", "raw").lower() == "raw"
    itemsize = _ITK_BYTES.get(fields.get("elementtype", fields.get("type", "")).lower())
    if vox and raw and itemsize:
        nbytes = int(np.prod(shape, dtype=np.float64)) * itemsize
        target = data_files[0] if data_files else path
        have = (os.path.getsize(target) if os.path.isfile(target) else 0) - (0 if data_files else header_len)
        if nbytes > have:
            return vox, ("truncated", f"the header declares {'x'.join(map(str, shape))} voxels ({_gib(nbytes)}) but "
                                      f"the data holds {_gib(max(have, 0))}: damaged, cut short or data file "
                                      "missing"), data_files
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    shape = tuple(int(s) for s in reader.GetSize())
    vox = shape[:3] + (1,) * (3 - len(shape[:3]))
    if reader.GetNumberOfComponents() != 1:
        return vox, ("unsupported", "colour or vector voxels: only grayscale volumes are scored"), data_files
    dim = len(shape)
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    spacing = np.ones(3)
    spacing[:dim] = np.asarray(reader.GetSpacing())[:3]
    if _singular(np.pad(direction * spacing, ((0, 1), (0, 1)))):
        return vox, ("bad_geometry", "the image's spacing or direction is singular (a zero spacing or collinear axes)"), \
            data_files
    return vox, too_large(vox), data_files


def volume_header(path: str, size: int, kind: str) -> Header:
    """The :class:`Header` of a NIfTI (``kind="nifti"``) or NRRD/MHA (``"itk"``) file; never raises."""
    from .._header import clean_message

    data_files: tuple = ()
    try:
        if kind == "nifti":
            shape, bad = _nifti(path, size)
        else:
            shape, bad, data_files = _itk(path, size)
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the index
        msg = clean_message(str(e).split("\n")[0], path)[:200]
        reason = "truncated" if any(k in msg.lower() for k in ("eof", "end of file", "truncat", "not enough")) \
            else "unreadable"
        shape, bad = (), (reason, f"cannot read the image header: {type(e).__name__}: {msg}")
    reason, detail = bad or ("", "")
    return Header(path=path, size=size, reason=reason, detail=detail, kind=kind, shape=tuple(shape),
                  data_files=data_files)
