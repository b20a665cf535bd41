"""Worker for test_distributed: trains tiny adapters on generated data, alone or under torchrun (gloo, CPU)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import make_set  # noqa: E402

import medad  # noqa: E402
from medad.checkpoints import save_checkpoint  # noqa: E402
from medad.training import distributed  # noqa: E402
from medad.training.features import features_from_tensors  # noqa: E402
from medad.training.fit import TrainConfig, accumulate_gradients, fit_adapters, reset_adapters  # noqa: E402
from medad.training.losses import MVFALoss  # noqa: E402


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    det = medad.load_detector(backbone="tiny")
    reset_adapters(det, 0)
    x, m, y = make_set(4, 6, seed=3)
    feats = features_from_tensors(det, x, y, m)
    # at the seeded init: one gradient over a global batch of all 10 samples (5 per rank under torchrun)
    params = list(det.model.adapters.parameters())
    for p in params:
        p.requires_grad_(True)
    accumulate_gradients(det, feats, det.text_features[None], torch.arange(10), MVFALoss(), torch.device("cpu"))
    grads = {n: p.grad.clone() for n, p in det.model.adapters.named_parameters() if p.grad is not None}
    torch.save(grads, Path(out_dir) / f"grads_w{info.world_size}_r{info.rank}.pt")
    for p in params:
        p.grad = None
    # 10 samples, global batch 4: steps of 4, 4, 2 -> rank slices 2/2, 2/2, 1/1
    fit_adapters(det, feats, det.text_features[None], TrainConfig(epochs=1, batch_size=4, progress=False), lr=1e-3)
    torch.save(det.model.adapters.state_dict(), Path(out_dir) / f"adapters_w{info.world_size}_r{info.rank}.pt")
    if info.main:
        save_checkpoint(det, Path(out_dir) / f"ckpt_w{info.world_size}.pt", extra={"world_size": info.world_size})
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
