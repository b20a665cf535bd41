"""List the files under some inputs without ever blocking or recursing: the first step of :func:`find_series`.

:func:`walk` visits folders with an explicit stack (any depth: no ``os.walk`` recursion limit), in sorted order
(a folder's files, then its sub-folders), and decides from ``stat`` alone, before any file is opened:

- ``excluded``: the path or name matches an ``exclude`` glob (in a matching folder, every path is listed as
  ``excluded`` without being opened or stat-ed);
- ``not_regular_file``: a named pipe (FIFO), socket or device: opening a FIFO would block forever;
- ``broken_link``: a symbolic link to nothing;
- ``duplicate_file``: the same file (device + inode) reached a second time, through a symbolic link, a hard link or
  overlapping inputs; ``duplicate_folder``: a link to a folder already walked (also stops symlink loops);
- ``empty_file``: zero bytes;
- ``unreadable``: a folder that cannot be listed, or a file that cannot be ``stat``-ed.

Everything else is a :class:`Candidate` (path, size) whose header is read later.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Candidate", "Skip", "walk"]

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A regular, non-empty file to read."""

    path: str
    size: int


@dataclass(frozen=True, slots=True)
class Skip:
    """A path not read, with its reason code and a one-line detail."""

    path: str
    reason: str
    detail: str


def _matches(path: str, patterns: Sequence[str]) -> str | None:
    name = os.path.basename(path)
    return next((p for p in patterns if fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p)), None)


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def walk(inputs: Iterable[str | os.PathLike], *, recursive: bool = True, exclude: Sequence[str] = (),
         prune: Iterable[str | os.PathLike] = ()) -> list[Candidate | Skip]:
    """Every path under ``inputs`` exactly once, in walk order, as a :class:`Candidate` or a :class:`Skip`.

    Args:
        inputs: files and/or folders (absolute or relative; reported as absolute paths, links not resolved).
        recursive: enter sub-folders.
        exclude: glob patterns matched against each path and each name (``*`` also matches ``/``).
        prune: folders never entered and not reported (e.g. the output folder of a run inside its input).

    Raises:
        FileNotFoundError: an input does not exist (a dangling link given as input counts as missing).
    """
    out: list[Candidate | Skip] = []
    seen_files: dict[tuple[int, int], str] = {}
    seen_dirs: dict[tuple[int, int], str] = {}
    pruned = set()
    for p in prune:
        try:
            st = os.stat(p)
            pruned.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    reported: set[str] = set()

    def file(path: str, st: os.stat_result | None, err: OSError | None = None) -> None:
        if path in reported:  # overlapping inputs name the same path twice: once is enough
            return
        reported.add(path)
        if err is not None:
            if isinstance(err, FileNotFoundError):
                out.append(Skip(path, "broken_link", "a symbolic link to a file or folder that does not exist"))
            else:
                out.append(Skip(path, "unreadable", f"cannot stat: {type(err).__name__} (errno {err.errno})"))
            return
        assert st is not None
        if not stat.S_ISREG(st.st_mode):
            out.append(Skip(path, "not_regular_file", f"{_kind(st.st_mode)}, not a file: never opened"))
            return
        key = (st.st_dev, st.st_ino)
        first = seen_files.setdefault(key, path)
        if first != path:
            out.append(Skip(path, "duplicate_file", f"the same file as {first} (a link or a second input)"))
        elif st.st_size == 0:
            out.append(Skip(path, "empty_file", "the file is empty (0 bytes)"))
        else:
            out.append(Candidate(path, int(st.st_size)))

    stack: list[tuple[str, str | None]] = []
    for item in inputs:
        path = os.path.abspath(os.fspath(item))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"input {str(item)!r} is neither a file nor a folder") from None
        except OSError as e:
            file(path, None, e)
            continue
        if stat.S_ISDIR(st.st_mode):
            stack.append((path, None))
            _walk_dirs(stack, recursive, patterns, pruned, seen_dirs, out, file, reported)
        elif (hit := _matches(path, patterns)) is not None:
            out.append(Skip(path, "excluded", f"matches --exclude {hit!r}"))
        else:
            file(path, st)
    return out


def _walk_dirs(stack: list[tuple[str, str | None]], recursive: bool, patterns: Sequence[str], pruned: set,
               seen_dirs: dict, out: list, file, reported: set) -> None:
    """Depth-first over ``stack`` without recursion: a folder's files (sorted), then its sub-folders (sorted).

    Stack items are ``(folder, pattern)``: ``pattern`` is the exclude pattern the folder matched (everything under
    it is then listed as excluded), or None."""
    while stack:
        folder, excluded_by = stack.pop()
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
        except OSError as e:
            out.append(Skip(folder, "unreadable", f"cannot open the folder: {type(e).__name__} (errno {e.errno})"))
            continue
        if key in pruned:
            continue
        first = seen_dirs.setdefault(key, folder)
        if first != folder:
            if folder not in reported:
                reported.add(folder)
                out.append(Skip(folder, "duplicate_folder", f"a link to the folder {first}, walked already"))
            continue
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.append(Skip(folder, "unreadable", f"cannot list the folder: {type(e).__name__} (errno {e.errno})"))
            continue
        subdirs = []
        for entry in entries:
            path = os.path.join(folder, entry.name)
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            hit = excluded_by or _matches(path, patterns)
            if is_dir:
                if recursive:
                    subdirs.append((path, hit))
                continue
            if hit is not None:
                if path not in reported:
                    reported.add(path)
                    out.append(Skip(path, "excluded", f"matches --exclude {hit!r}"))
                continue
            try:
                st = entry.stat() if not entry.is_symlink() else os.stat(path)
            except OSError as e:
                file(path, None, e)
                continue
            file(path, st)
        stack.extend(reversed(subdirs))
