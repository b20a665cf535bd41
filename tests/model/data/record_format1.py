"""Record ``format1_tiny.pt`` (a format-1 medad checkpoint written by the ORIGINAL code) and its expected outputs.

Run once from a pristine worktree of commit e582c4e (the code before the issue-10 restructuring)::

    git worktree add /tmp/medad_base e582c4e
    cd /tmp/medad_base && PYTHONPATH=/tmp/medad_base $REPO/.venv/bin/python \\
        $REPO/tests/model/data/record_format1.py $REPO/tests/model/data

The checkpoint: tiny backbone (not stored: the seeded random init), seeded random adapters, fitted normalizers, a
memory bank cut to 24 tokens per level (small file), and non-default options (``image_score_rule="map_max"``,
``smoothing_sigma=2.5``, thresholds ``(0.4, 0.6, 0.8)``), object name ``"Liver"``. ``format1_tiny_expected.npz``
holds ``predict`` of the loaded checkpoint on seeded images (scores in full, maps as the SHA-256 of their float32
bytes) and the SHA-256 of the demo asset's outputs (with the asset's own SHA-256).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch


def images(seed: int, n: int = 2, h: int = 240, w: int = 240) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def main(out_dir: Path) -> None:
    import medad
    from medad.model.memory_bank import MemoryBank

    torch.set_num_threads(1)
    det = medad.load_detector(backbone="tiny", adapters=None, object_name="Liver")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in det.model.adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    det.fit_memory_bank(images(1))
    bank = det.memory_bank
    det.memory_bank = MemoryBank(bank.seg[:, :24].clone(), bank.det[:, :24].clone())
    det.fit_normalizers(images(2))
    det.image_score_rule = "map_max"
    det.smoothing_sigma = 2.5
    det.thresholds = (0.4, 0.6, 0.8)
    ckpt = out_dir / "format1_tiny.pt"
    det.save_adapters(ckpt, extra={"note": "format-1 fixture written by medad e582c4e"})

    loaded = medad.load_detector(adapters=str(ckpt))
    q = images(3, 2, 200, 256)
    res = loaded.predict(q)
    demo = medad.load_detector(adapters="demo").predict(images(4, 2))
    expected = {}
    for k in ("image_scores", "anomaly_maps", "level_maps", "level_scores", "bank_maps", "bank_scores"):
        a = getattr(res, k).float().contiguous().numpy()
        if a.size <= 64:
            expected[f"ckpt.{k}"] = a
        else:  # large maps: SHA-256 of the exact float32 bytes, plus 64 values for a readable failure
            expected[f"ckpt.{k}.sha256"] = np.array(hashlib.sha256(a.tobytes()).hexdigest())
            expected[f"ckpt.{k}.probe"] = a.reshape(-1)[np.linspace(0, a.size - 1, 64).round().astype(np.int64)]
    for k in ("image_scores", "anomaly_maps", "level_scores"):
        expected[f"demo.{k}.sha256"] = np.array(hashlib.sha256(getattr(demo, k).float().contiguous().numpy()
                                                               .tobytes()).hexdigest())
    expected["demo_asset.sha256"] = np.array(hashlib.sha256(
        (Path(medad.__file__).parent / "assets" / "demo-tiny-phantom.pt").read_bytes()).hexdigest())
    np.savez_compressed(out_dir / "format1_tiny_expected.npz", **expected)
    print("wrote", ckpt, ckpt.stat().st_size, "bytes; medad from", medad.__file__)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
