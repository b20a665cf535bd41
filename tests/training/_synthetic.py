"""Generated 2D images with lesion-like anomalies (bright blobs inside an organ-like disc) for training tests, and
an MVFA-layout dataset folder made of them."""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def make_images(n: int, abnormal: bool, seed: int, size: int = 240):
    """``n`` images ``[n,3,S,S]`` in [0,1] and masks ``[n,1,S,S]``; abnormal ones carry 1-2 bright blobs."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    images, masks = [], []
    for _ in range(n):
        noise = F.interpolate(torch.rand(1, 1, 12, 12, generator=g), size=(size, size), mode="bicubic",
                              align_corners=False)[0, 0]
        cx, cy = (size / 2 + 10 * (torch.rand(2, generator=g) - 0.5)).tolist()
        r = size * (0.38 + 0.05 * float(torch.rand(1, generator=g)))
        organ = (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r).float()
        img = organ * (0.35 + 0.15 * noise) + 0.03 * torch.rand(size, size, generator=g)
        mask = torch.zeros(size, size)
        if abnormal:
            for _ in range(1 + int(torch.rand(1, generator=g) < 0.4)):
                ang, rad = float(torch.rand(1, generator=g)) * 2 * math.pi, float(torch.rand(1, generator=g)) * 0.6 * r
                lx, ly = cx + rad * math.cos(ang), cy + rad * math.sin(ang)
                s = 10 + 12 * float(torch.rand(1, generator=g))
                blob = torch.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * s * s))
                img = img + 0.45 * blob * organ
                mask = torch.maximum(mask, ((blob > 0.5) * organ).float())
        images.append(img.clamp(0, 1).expand(3, -1, -1))
        masks.append(mask[None])
    return torch.stack(images), torch.stack(masks)


def make_set(n_normal: int, n_abnormal: int, seed: int, size: int = 240):
    """Normal then abnormal images: ``(images, masks, labels)``."""
    xn, mn = make_images(n_normal, False, seed, size)
    xa, ma = make_images(n_abnormal, True, seed + 1000, size)
    labels = torch.tensor([0] * n_normal + [1] * n_abnormal)
    return torch.cat([xn, xa]), torch.cat([mn, ma]), labels


def write_layout(root: Path, name: str, seed: int, n=(3, 3, 3, 3)) -> Path:
    """MVFA layout with generated lesion images: valid (n0 good, n1 bad), test (n2 good, n3 bad)."""
    for split, ng, nb, s in (("valid", n[0], n[1], seed), ("test", n[2], n[3], seed + 7)):
        x, m, y = make_set(ng, nb, seed=s)
        for i in range(len(y)):
            cls = "good" if y[i] == 0 else "Ungood"
            img = (x[i, 0].numpy() * 255).astype(np.uint8)
            p = root / f"{name}_AD" / split / cls / "img" / f"{split}{i:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(p)
            if y[i] == 1:
                q = root / f"{name}_AD" / split / cls / "anomaly_mask" / p.name
                q.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((m[i, 0].numpy() * 255).astype(np.uint8)).save(q)
    return root / f"{name}_AD"
