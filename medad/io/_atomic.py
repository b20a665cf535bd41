"""Atomic file writes: write to a temporary name in the target folder, then ``os.replace``.

A reader (or a batch run resumed after ``kill -9``) therefore sees either the old file, the complete new file, or no
file, never a half-written one. Temporary names start with ``.`` and contain ``.tmp-`` so they are easy to clean.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic"]

def _suffix(name: str) -> str:
    """The name's last two suffixes (``.nii.gz``, ``.tar.gz``, ``.json``): writers that pick the format from the file
    name see the same ending in the temporary name."""
    return "".join(Path(name).suffixes[-2:])


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); on success move it onto ``path`` atomically.

    The parent folder is created. On an exception the temporary file is removed and ``path`` is left untouched.
    """
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{_suffix(dst.name)}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # make the bytes durable before the rename
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns ``Path(path)``."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8", newline="")
    return Path(path)
