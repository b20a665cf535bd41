"""The bundle's volume loading transform; the data list itself comes from :func:`medad.io.find_volumes`."""

from __future__ import annotations

from typing import Any, Hashable, Mapping

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..io.discovery import safe_name, volume_stem

__all__ = ["LoadVolumed", "output_name"]


class LoadVolumed(MapTransform):
    """Load the volume of each data-list item as ``MetaTensor [1, X, Y, Z]`` with :mod:`medad.io`.

    Items from :func:`medad.io.find_volumes` are loaded from their ``SeriesRecord`` (key ``series_key``, removed
    afterwards so batches collate); a bare ``{"image": path}`` (a NIfTI file, a DICOM file or a one-series folder) goes through
    :func:`medad.io.load_volume`. The item's ``name`` (or the file stem) is stored as ``meta["output_name"]``.
    """

    def __init__(self, keys: KeysCollection = "image", series_key: str = "series", name_key: str = "name",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.series_key = series_key
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from ..io import load_series, load_volume

        d = dict(data)
        record = d.pop(self.series_key, None)
        name = d.pop(self.name_key, None)
        for key in self.key_iterator(d):
            src = d[key]
            if isinstance(src, MetaTensor):
                continue
            vol = load_series(record) if record is not None else load_volume(src)
            vol.meta["output_name"] = safe_name(name) if name else safe_name(volume_stem(str(src)))
            d[key] = vol
        return d


def output_name(meta: Mapping) -> str:
    """Output stem of a volume: ``meta["output_name"]`` from :class:`LoadVolumed`, else the input file stem."""
    name = meta.get("output_name") if meta else None
    if name:
        return safe_name(str(name))
    return safe_name(volume_stem(str((meta or {}).get("filename_or_obj", "volume"))))
