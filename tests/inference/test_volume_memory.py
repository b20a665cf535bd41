"""The runner's peak extra memory does not grow with the slice count beyond the float32 output array.

One child process scores a 512x512x40 and a 512x512x160 int16 CT one after the other and reads the peak RSS
(``VmHWM``) of each run, resetting it in between (``/proc/self/clear_refs``). The child runs with
``MALLOC_MMAP_THRESHOLD_=1 MiB`` so glibc hands freed batch buffers back to the OS: RSS then follows the live tensors
instead of heap fragmentation (which is bounded but noisy, +-50 MiB).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    from types import SimpleNamespace
    import torch
    from monai.data import MetaTensor
    from medad.inference import VolumeRunner

    class Fake:
        image_size = 240
        def predict(self, x):
            m = x.mean(1)
            return SimpleNamespace(image_scores=m.flatten(1).mean(1), anomaly_maps=m)

    def status_mb(field):
        return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

    torch.set_num_threads(1)
    aff = torch.diag(torch.tensor([-0.7, -0.7, 1.5, 1.0], dtype=torch.float64))
    runner = VolumeRunner(Fake(), batch_size=16, intensity="ct:soft_tissue")
    g = torch.Generator().manual_seed(0)
    out = {}
    for n in [16] + [int(a) for a in sys.argv[1:]]:  # 16: warm-up (lazy imports, allocator)
        vol = MetaTensor(torch.randint(-1000, 1000, (1, 512, 512, n), dtype=torch.int16, generator=g), affine=aff,
                         meta={"modality": "CT"})
        base = status_mb("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        res = runner.run(vol)
        assert tuple(res.anomaly_map.shape) == (1, 512, 512, n)
        out[n] = {"extra_mb": status_mb("VmHWM") - base, "kept_mb": status_mb("VmRSS") - base}
        del vol, res
    print(json.dumps(out))
    """
)


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM" in open("/proc/self/status").read()
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs and VmHWM to measure peak RSS")
def test_peak_memory_flat_in_slices():
    sizes = (40, 160)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**20))
    p = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, sizes)], capture_output=True, text=True, env=env,
                       timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    out = {int(k): v for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}
    mib_per_slice = 512 * 512 * 4 / 2**20  # the float32 output: 1 MiB per slice
    small, large = out[sizes[0]], out[sizes[1]]
    # what stays after run() is the output map
    assert abs(large["kept_mb"] - sizes[1] * mib_per_slice) < 30, out
    # peak growth from 40 to 160 slices = the output growth (120 MiB); one more full float32 copy of the volume
    # would add another 120 MiB, so half of that is the slack
    output_growth = (sizes[1] - sizes[0]) * mib_per_slice
    assert large["extra_mb"] - small["extra_mb"] < 1.5 * output_growth, out
    # the fixed part (per-batch temporaries for 16 slices) is modest
    assert small["extra_mb"] < sizes[0] * mib_per_slice + 200, out
