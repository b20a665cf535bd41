"""Find image volumes in any folder tree: a header-only DICOM index grouped into series, plus NIfTI/NRRD/MHA files.

:func:`find_series` runs three steps, one module each:

1. :mod:`.walk`: list every path (iteratively, any depth), deciding from ``stat`` alone what is never opened
   (FIFOs, sockets, devices, excluded paths, empty files, links to files or folders seen already);
2. :mod:`.headers` / :mod:`.volumes`: read each file's header (a lean DICOM reader with pydicom as fallback; NIfTI/
   NRRD/MHA headers bounded before anything is allocated), in worker processes for big inputs;
3. :mod:`.grouping`: group DICOM slices into volumes and check them.

Every input path ends up in exactly one :class:`FileRecord`: ``status="series"`` (part of a loadable volume, with
its ``series_key``) or ``status="skipped"`` with a stable ``reason`` code and a one-line ``detail``. Every series found
is a :class:`SeriesRecord`: loadable (``index.series``) or rejected with its reason (``index.rejected``). The codes,
whether they mean damaged data (:data:`DAMAGE_REASONS`) and what to do are in :data:`REASONS`.

Single-frame files are grouped by (StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID, size), orientation and
pixel spacing within tolerance, and a group is split further by AcquisitionNumber, EchoNumbers,
TemporalPositionIdentifier, TriggerTime, DiffusionBValue or ImageType only when it holds several slices at one position.
Slices are sorted by position along the slice normal (InstanceNumber is ignored); spacing must be regular within 1 %.
Enhanced and legacy-converted multi-frame objects are one record per file (their geometry is checked when loading).

Example::

    index = find_series(["/data/pacs_export"], progress=True)
    for rec in index.series:                      # loadable volumes
        vol = load_series(rec)                    # MetaTensor [1, X, Y, Z]
    for rec in index.rejected:                    # series found that cannot be loaded, with a reason
        print(rec.key, rec.reason, rec.detail)
    for f in index.skipped:                       # every file not in a loadable volume, with a reason
        print(f.path, f.reason, f.detail)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from .headers import ORIENTATION_TOL, Header, lean_values, summarize, values_from_dataset
from .records import (IMAGE_FILE_SUFFIXES, FileRecord, SeriesIndex, SeriesRecord, is_image_file,
                      split_image_suffix)
from .volumes import volume_header

__all__ = ["DAMAGE_REASONS", "FileRecord", "IMAGE_FILE_SUFFIXES", "ORIENTATION_TOL", "REASONS", "SeriesIndex",
           "SeriesRecord", "find_series", "is_image_file", "split_image_suffix"]

log = logging.getLogger(__name__)

#: Every reason code a file or series can be skipped or fail with at indexing time: code -> (meaning, what to do).
REASONS = {
    "not_dicom": ("not DICOM and not a NIfTI/NRRD/MHA image (text, PDF, JPEG, archive...)",
                  "nothing; unpack archives to score what they hold"),
    "dicomdir": ("a DICOMDIR index file", "nothing: its images are indexed from their own files"),
    "non_image": ("a DICOM object that is not an image (SR, PR, KO, SEG, RTSTRUCT, RT plan/dose, ECG, PDF, a data "
                  "set without SOP class)", "nothing"),
    "localizer": ("a localizer/scout/survey image", "nothing"),
    "projection": ("a 2D projection (CR/DX/MG/XA/RF) or a MIP/MinIP/volume rendering", "nothing: score the "
                   "cross-sectional series it was made from"),
    "no_pixel_data": ("an image instance without Pixel Data (header-only export or placeholder)",
                      "re-export with pixel data if the series should be scored"),
    "no_geometry": ("a 2D image without ImagePositionPatient/ImageOrientationPatient/PixelSpacing (e.g. a "
                    "secondary capture)", "nothing: not part of a volume"),
    "unsupported": ("colour (RGB) images, cine/NM/US multi-frame objects without volume geometry, 4D files",
                    "convert to grayscale 3D volumes if they should be scored"),
    "label_map": ("a label/mask volume (few integer values, or a NIfTI 'label' intent)", "nothing"),
    "excluded": ("matches an --exclude pattern (never opened)", "nothing"),
    "not_regular_file": ("a named pipe (FIFO), socket or device (never opened)", "nothing"),
    "broken_link": ("a symbolic link to nothing", "fix or remove the link"),
    "duplicate_file": ("the same file reached twice (symbolic/hard link, overlapping inputs)", "nothing"),
    "duplicate_folder": ("a link to a folder walked already (also stops link loops)", "nothing"),
    "duplicate_instance": ("an identical second copy of a DICOM instance", "nothing: the first copy is used"),
    "duplicate_positions": ("several slices at one position that no tag separates (4D data or merged series)",
                            "split the series (e.g. per time point) before scoring"),
    "gantry_tilt": ("slices stacked obliquely to their plane (gantry tilt)", "resample to a regular grid first"),
    "empty_file": ("a 0-byte file (damaged data)", "re-export the file"),
    "truncated": ("a file cut short, or a header that declares more data than the file holds (damaged data)",
                  "re-export the file"),
    "unreadable": ("a file or folder that cannot be read or parsed (damaged data or permissions)",
                   "check permissions, re-export"),
    "missing_uid": ("a DICOM image without SeriesInstanceUID (damaged data)", "re-export with UIDs"),
    "bad_geometry": ("degenerate orientation (e.g. ImageOrientationPatient 1\\0\\0\\1\\0\\0), singular NIfTI affine, "
                     "non-positive spacing (damaged data)", "fix the header or re-export"),
    "irregular_spacing": ("missing slices or uneven slice spacing (damaged data)", "re-export the complete series"),
    "conflicting_duplicates": ("two files with one SOPInstanceUID and different content (damaged data)",
                               "remove the wrong copies and rerun"),
    "too_large": ("a volume over MEDAD_MAX_VOXELS voxels", "crop or split it, or raise MEDAD_MAX_VOXELS"),
}

#: Reasons that mean damaged or inconsistent data (or a volume too large to load): a run with any of them (in a
#: selected series) exits 1. The others mean "not something to score" and are reported, not failed.
DAMAGE_REASONS = frozenset({"empty_file", "truncated", "unreadable", "missing_uid", "bad_geometry",
                            "irregular_spacing", "conflicting_duplicates", "too_large", "broken_link"})


def read_one(path: str, size: int, include_image_files: bool = True) -> Header:
    """The :class:`Header` of one file; never raises."""
    kind = is_image_file(path)
    if kind and include_image_files:
        return volume_header(path, size, kind)
    try:
        return summarize(path, size, lean_values(path, size))
    except Exception:  # noqa: BLE001 - _Fallback or anything odd: pydicom gives the reason
        pass
    from .._header import read_header

    ds, bad = read_header(path)
    values = values_from_dataset(ds) if ds is not None else {}
    if bad:
        return summarize(path, size, values, *bad)
    return summarize(path, size, values)


def read_many(items: list[tuple[str, int]], include_image_files: bool = True) -> list[Header]:
    """:func:`read_one` over ``(path, size)`` pairs (the unit of work of an indexing process)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings about odd files: the reasons say it
        return [read_one(p, n, include_image_files) for p, n in items]


def default_index_workers() -> int:
    """Header-reading processes: ``MEDAD_INDEX_WORKERS`` or the CPU count (at most 8)."""
    try:
        return max(1, int(os.environ["MEDAD_INDEX_WORKERS"]))
    except (KeyError, ValueError):
        return max(1, min(8, os.cpu_count() or 1))


_PARALLEL_MIN_FILES = 2000  # below this, starting processes costs more than it saves
_TASK_FILES = 256


def _shared(headers: list[Header], cache: dict) -> list[Header]:
    """The headers with their orientation, spacing and split tuples shared across files (a series repeats them):
    about a third less memory per file for big exports."""
    out = []
    for h in headers:
        if h.iop is not None:
            h = h._replace(iop=cache.setdefault(h.iop, h.iop), spacing=cache.setdefault(h.spacing, h.spacing),
                           split=cache.setdefault(h.split, h.split))
        out.append(h)
    return out


def _read_headers(items: list[tuple[str, int]], include_image_files: bool, workers: int, bar) -> list:
    """Headers of ``items`` in order, read in ``workers`` processes (in this one for small inputs)."""
    cache: dict = {}
    chunks = [items[i: i + _TASK_FILES] for i in range(0, len(items), _TASK_FILES)]
    if workers <= 1 or len(items) < _PARALLEL_MIN_FILES:
        out = []
        for chunk in chunks:
            out += _shared(read_many(chunk, include_image_files), cache)
            bar.update(len(chunk))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import pydicom.uid  # noqa: F401 - imported once here, shared by the forked workers (not once per worker)

    from .. import _header  # noqa: F401

    # fork (as torch's DataLoader does): no re-import of __main__, so scripts and notebooks need no main guard; the
    # children only parse bytes (no CUDA, no OpenMP, no threads of ours)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    out: list = []
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=mp.get_context(method)) as pool:
            for chunk, headers in zip(chunks, pool.map(read_many, chunks, [include_image_files] * len(chunks))):
                out += _shared(headers, cache)
                bar.update(len(chunk))
    except (BrokenProcessPool, OSError) as e:  # a killed worker, no process slots: finish here
        log.warning("indexing processes failed (%s); reading the remaining headers in this process",
                    type(e).__name__)
        for chunk in chunks[len(out) // _TASK_FILES:]:
            out += _shared(read_many(chunk, include_image_files), cache)
            bar.update(len(chunk))
    return out


def find_series(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    recursive: bool = True,
    include_image_files: bool = True,
    progress: bool = False,
    exclude: Sequence[str] = (),
    prune: Sequence[str | os.PathLike] = (),
    workers: int | None = None,
) -> SeriesIndex:
    """Index files and folders into volumes, reading headers only (never pixel data).

    Args:
        inputs: files and/or folders (folders are walked, sorted, recursively unless ``recursive=False``).
        recursive: walk sub-folders.
        include_image_files: index NIfTI/NRRD/MHA files as one-file records (``kind="nifti"``/``"itk"``);
            otherwise they are skipped as ``not_dicom``.
        progress: a tqdm bar (files/s) while reading headers.
        exclude: glob patterns of paths/names never opened (reason ``excluded``); a matching folder is not entered.
        prune: folders not walked at all (e.g. an output folder inside an input).
        workers: header-reading processes (default :func:`default_index_workers`; inputs under 2,000 files are
            read in this process).

    Returns:
        A :class:`SeriesIndex`: ``series`` (loadable) and ``rejected`` sorted by (study, series number, key), and
        every input path exactly once in ``files`` (in walk order).

    Raises:
        FileNotFoundError: an input does not exist.
    """
    from tqdm.auto import tqdm

    from .grouping import group
    from .walk import Candidate, walk

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found = walk(inputs, recursive=recursive, exclude=exclude, prune=prune)
    items = [(c.path, c.size) for c in found if isinstance(c, Candidate)]
    with tqdm(total=len(items), desc="indexing", unit="files", disable=not progress, smoothing=0.1) as bar:
        headers = _read_headers(items, include_image_files, workers or default_index_workers(), bar)
    series, rejected, status = group(headers)
    files = []
    for c in found:
        if isinstance(c, Candidate):
            files.append(status[c.path])
        else:
            files.append(FileRecord(c.path, "skipped", c.reason, c.detail))
    return SeriesIndex(series=series, files=files, rejected=rejected)
