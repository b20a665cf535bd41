"""Step 1-2 of ``medad score``: index the inputs, select series, and plan what is left to score.

:func:`make_plan` indexes every file (:func:`medad.io.find_series`: header-only reads in worker processes; ``exclude``
patterns are applied before any file is opened and the output folder is not walked), applies the filters
(:func:`select_series`: filtered series are reported, not dropped silently) to the loadable and to the rejected
series (series found that cannot be loaded: each keeps its row with its reason), and compares each selected loadable
series with its ``record.json`` (:mod:`medad.batch.records`): a series whose record is ``ok`` (or ``skipped``) and was
made from the same input files with the same settings is done; the others are in :attr:`Plan.todo`.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..io import SeriesIndex, SeriesRecord, find_series
from . import records

__all__ = ["Plan", "make_plan", "select_series"]

log = logging.getLogger("medad.batch")


@dataclass
class Plan:
    """What a run works on (the same on every rank).

    Attributes:
        index: the :class:`medad.io.SeriesIndex` of the inputs (the output folder's own files left out).
        selected: loadable series kept by the filters; ``filtered``: series key -> why it was filtered out (loadable
            or rejected series); ``rejected``: rejected series kept by the filters (rows with their index reason).
        dirs: series key -> folder name under ``OUT/series``; ``fingerprints``: series key -> record fingerprint.
        todo: keys of the selected series still to score. error: why the run cannot start ("" if it can).
    """

    index: SeriesIndex = field(default_factory=SeriesIndex)
    selected: list[SeriesRecord] = field(default_factory=list)
    filtered: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    todo: list[str] = field(default_factory=list)
    error: str = ""
    rejected: list[SeriesRecord] = field(default_factory=list)

    def todo_series(self) -> list[SeriesRecord]:
        by_key = {s.key: s for s in self.selected}
        return [by_key[k] for k in self.todo]


def _split_list(value: Optional[str | Sequence[str]]) -> Optional[list[str]]:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip().upper() for s in items if s.strip()] or None


def select_series(series: Sequence[SeriesRecord], modality=None, body_part=None,
                  series_description: Optional[str] = None,
                  exclude: Optional[Sequence[str]] = None) -> tuple[list[SeriesRecord], dict[str, str]]:
    """Apply the filters; returns ``(kept, {key: why filtered})``.

    Args:
        modality: ``"CT"``, ``"CT,MR"`` or a list (case-insensitive, exact).
        body_part: BodyPartExamined values, as ``modality``.
        series_description: regular expression searched (case-insensitive) in SeriesDescription.
        exclude: glob patterns (``"*mask*"``, ``"*/derived/*"``) matched against each file's path and name; a
            series whose files all match is filtered out. :func:`make_plan` applies them earlier, in the walk, so
            matching files are never opened.
    """
    mods, parts = _split_list(modality), _split_list(body_part)
    rx = re.compile(series_description, re.I) if series_description else None
    pats = [exclude] if isinstance(exclude, str) else list(exclude or [])
    kept, filtered = [], {}
    for s in series:
        hit = next((p for p in pats if all(fnmatch.fnmatch(f, p) or fnmatch.fnmatch(os.path.basename(f), p)
                                           for f in s.files)), None)
        if hit:
            filtered[s.key] = f"excluded by pattern {hit!r}"
        elif mods and s.modality.upper() not in mods:
            filtered[s.key] = f"modality {s.modality or '(none)'!r} not in {mods}"
        elif parts and s.body_part.upper() not in parts:
            filtered[s.key] = f"body part {s.body_part or '(none)'!r} not in {parts}"
        elif rx and not rx.search(s.series_description):
            filtered[s.key] = f"series description does not match {series_description!r}"
        else:
            kept.append(s)
    return kept, filtered


def _without_outputs(index: SeriesIndex, out: Path) -> SeriesIndex:
    """Drop the files inside the output folder (``--out`` inside an input): our own maps are not inputs, and the
    tables must not change between the first run and a rerun."""
    prefix = str(out.resolve()) + os.sep
    real = functools.lru_cache(maxsize=None)(os.path.realpath)  # one call per folder, symlinks resolved
    inside = {f.path for f in index.files if (real(os.path.dirname(f.path)) + os.sep).startswith(prefix)}
    if not inside:
        return index
    log.info("ignoring %d files inside the output folder %s", len(inside), out)
    return SeriesIndex(series=[s for s in index.series if not all(f in inside for f in s.files)],
                       files=[f for f in index.files if f.path not in inside],
                       rejected=[s for s in index.rejected if not all(f in inside for f in s.files)])


def make_plan(inputs: Sequence[str], out: Path, config: dict, *, modality=None, body_part=None,
              series_description: Optional[str] = None, exclude: Optional[Sequence[str]] = None,
              overwrite: bool = False, retry_failed: bool = True, stow: Optional[str] = None,
              progress: bool = True, index_workers: Optional[int] = None) -> Plan:
    """Check ``out`` against the run settings (``run.json``), index ``inputs``, filter, and list what is left to do.

    Raises:
        records.RunConfigError: ``out`` holds results of other settings (and not ``overwrite``).
        FileNotFoundError: an input does not exist. re.error: a bad ``series_description`` pattern.
    """
    if series_description:
        re.compile(series_description)  # a bad pattern fails before a long indexing run
    records.check_run_config(out, config, overwrite)  # before indexing: a big export takes a while to index
    records.remove_stale_temporaries(out)
    pats = [exclude] if isinstance(exclude, str) else list(exclude or [])
    index = _without_outputs(find_series(inputs, progress=progress, exclude=pats, prune=[out],
                                         workers=index_workers), out)
    selected, filtered = select_series(index.series, modality, body_part, series_description)
    rejected, filtered_rejected = select_series(index.rejected, modality, body_part, series_description)
    filtered.update(filtered_rejected)
    digest = records.config_hash(config)
    dirs = {s.key: records.series_dir_name(s.key, s.modality, s.series_number)
            for s in (*index.series, *index.rejected)}
    fps = {s.key: records.series_fingerprint(s.files, digest) for s in selected}
    todo = []
    for s in selected:
        rec = records.read_record(out / "series" / dirs[s.key])  # records of other settings have another fingerprint
        done = rec is not None and rec.fingerprint == fps[s.key] and (rec.ok or rec.skipped or not retry_failed)
        if done and stow and rec.ok and "seg" in rec.outputs and rec.outputs.get("stow", {}).get("url") != stow:
            done = False  # scored before, but not sent to this server yet
        if not done:
            todo.append(s.key)
    return Plan(index, selected, filtered, dirs, fps, todo, rejected=rejected)
