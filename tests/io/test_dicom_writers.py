"""Writers: Parametric Map and SEG read back with highdicom on the source geometry, PNG overlays, STOW-RS."""

from __future__ import annotations

import http.server
import threading

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from highdicom.pm.sop import pmread
from io_helpers import SHAPE, oblique_affine
from monai.data import MetaTensor
from monai.transforms import Orientation, SpatialCrop

from medad.synthetic import write_dicom_series
from medad.inference.grading import GRADE_LABELS, grade
from medad.io import (
    StowError,
    load_volume,
    metatensor_from_hd_volume,
    save_overlay_png,
    stow,
    write_parametric_map,
    write_segmentation,
)

THRESHOLDS = (0.3, 0.6, 0.85)


def _uids(tag: str) -> dict:
    """Explicit UIDs for a writer (the UID policy is medad.inference.uids, not medad.io)."""
    return {"series_uid": pydicom.uid.generate_uid(entropy_srcs=["io-test", tag, "series"]),
            "sop_instance_uid": pydicom.uid.generate_uid(entropy_srcs=["io-test", tag, "instance"])}


def _graded(amap) -> MetaTensor:
    return MetaTensor(torch.from_numpy(grade(amap[0], THRESHOLDS))[None], affine=amap.affine)


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory, small_ct):
    """An oblique, descending-InstanceNumber series, its volume and a smooth [0, 1] map on its grid."""
    hu, mask, _ = small_ct
    folder = tmp_path_factory.mktemp("src")
    write_dicom_series(hu, oblique_affine(), folder, seed="out", descending_instance_numbers=True)
    vol = load_volume(folder)
    amap = vol.clone()
    x, y, z = np.meshgrid(*[np.linspace(0, 1, n) for n in SHAPE], indexing="ij")
    amap[0] = torch.from_numpy(((x + 2 * y + 3 * z) / 6).astype(np.float32))
    return vol, amap


def _geometry_equal(path, vol):
    ds = hd.imread(path)
    src = hd.get_volume_from_series([pydicom.dcmread(f) for f in vol.meta["source_files"]])
    return ds.get_volume_geometry().geometry_equal(src.get_geometry())


def test_parametric_map_round_trip(tmp_path, oblique_series):
    vol, amap = oblique_series
    out = write_parametric_map(amap, vol.meta["source_files"], tmp_path / "pm.dcm", **_uids("pm"))
    pm = pmread(out)  # not exported from highdicom.pm in 0.28.2
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and "FloatPixelData" in pm
    assert int(pm.NumberOfFrames) == SHAPE[2]
    assert pm.FrameOfReferenceUID == pydicom.dcmread(vol.meta["source_files"][0]).FrameOfReferenceUID
    back = metatensor_from_hd_volume(pm.get_volume(dtype=np.float32))
    np.testing.assert_allclose(back.affine.numpy(), vol.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(back.numpy(), amap.numpy())
    assert _geometry_equal(out, vol)
    refs = {r.ReferencedSOPInstanceUID for s in pm.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == {pydicom.dcmread(f).SOPInstanceUID for f in vol.meta["source_files"]}
    # the caller's UIDs are used as given (the writer decides none)
    assert (pm.SOPInstanceUID, pm.SeriesInstanceUID) == (_uids("pm")["sop_instance_uid"], _uids("pm")["series_uid"])
    with pytest.raises(ValueError, match="required"):
        write_parametric_map(amap, vol, tmp_path / "pm2.dcm", series_uid="", sop_instance_uid="")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pm.dcm"]  # no temporary files left


def test_segmentation_round_trip_slice_for_slice(tmp_path, oblique_series):
    vol, amap = oblique_series
    out = write_segmentation(_graded(amap), vol.meta["source_files"], tmp_path / "seg.dcm", labels=GRADE_LABELS,
                             **_uids("seg"))
    seg = hd.seg.segread(out)
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["anomaly_low", "anomaly_mid", "anomaly_high"]
    back = metatensor_from_hd_volume(seg.get_volume(combine_segments=True))
    expected = grade(amap[0].numpy(), THRESHOLDS)
    assert set(np.unique(expected)) == {0, 1, 2, 3}
    np.testing.assert_allclose(back.affine.numpy(), vol.affine.numpy(), atol=1e-5)
    for k in range(SHAPE[2]):
        np.testing.assert_array_equal(back[0, :, :, k].numpy(), expected[:, :, k])


def test_writers_accept_reoriented_map_and_label_maps(tmp_path, oblique_series):
    """A map still in the runner's RAS-reoriented layout is matched back onto the source frames."""
    vol, amap = oblique_series
    ras = Orientation(axcodes="RAS", labels=None)(amap)
    assert ras.shape != amap.shape or not torch.equal(ras.affine, amap.affine)
    pm = hd.imread(write_parametric_map(ras, vol, tmp_path / "pm.dcm", **_uids("pm")))
    np.testing.assert_array_equal(metatensor_from_hd_volume(pm.get_volume(dtype=np.float32)).numpy(), amap.numpy())
    labels = _graded(amap)
    assert labels.dtype == torch.uint8
    out = write_segmentation(labels, vol, tmp_path / "seg.dcm",
                             labels={"background": 0, "anomaly_low": 1, "anomaly_mid": 2, "anomaly_high": 3},
                             **_uids("seg"))
    back = metatensor_from_hd_volume(hd.seg.segread(out).get_volume(combine_segments=True))
    np.testing.assert_array_equal(back[0].numpy(), labels[0].numpy())


def test_map_on_another_grid_is_refused(tmp_path, oblique_series):
    vol, amap = oblique_series
    aff = amap.affine.clone()
    aff[:3, 0] *= 2
    coarse = MetaTensor(amap[:, ::2].as_tensor().clone(), affine=aff)  # resampled to half the columns: not the source grid any more
    with pytest.raises(ValueError, match="not on the voxel grid"):
        write_parametric_map(coarse, vol.meta["source_files"], tmp_path / "pm.dcm", **_uids("pm"))
    # a crop of the source grid is fine: highdicom pads it back with zeros
    cropped = SpatialCrop(roi_start=(2, 0, 0), roi_end=SHAPE)(amap)  # updates the affine, unlike amap[:, 2:]
    crop = write_parametric_map(cropped, vol, tmp_path / "crop.dcm", **_uids("crop"))
    back = metatensor_from_hd_volume(hd.imread(crop).get_volume(dtype=np.float32))
    np.testing.assert_array_equal(back[0, 2:].numpy(), amap[0, 2:].numpy())
    assert float(back[0, :2].abs().max()) == 0.0
    crop.unlink()
    with pytest.raises(ValueError, match="graded integer label map"):  # grading is not the writer's business
        write_segmentation(amap, vol, tmp_path / "seg.dcm", labels=GRADE_LABELS, **_uids("seg"))
    with pytest.raises(ValueError, match="label map holds value 3"):
        write_segmentation(_graded(amap), vol, tmp_path / "seg.dcm", labels=GRADE_LABELS[:2], **_uids("seg"))
    assert list(tmp_path.iterdir()) == []


def test_overlay_png(tmp_path, oblique_series):
    from PIL import Image

    vol, amap = oblique_series
    out = save_overlay_png(vol, amap, tmp_path / "ov.png", [0, 5, 9], columns=2)
    img = np.asarray(Image.open(out))
    # each tile is (plain | overlay); in-plane display size is Y rows x X columns for an axial slice
    assert img.shape == (2 * SHAPE[1], 2 * 2 * SHAPE[0], 3)
    plain, over = img[:SHAPE[1], :SHAPE[0]], img[:SHAPE[1], SHAPE[0]:2 * SHAPE[0]]
    assert np.all(plain[..., 0] == plain[..., 1]) and not np.array_equal(plain, over)
    with pytest.raises(ValueError, match="out of range"):
        save_overlay_png(vol, amap, tmp_path / "bad.png", 10)


class _FakeStow(http.server.BaseHTTPRequestHandler):
    received: list[bytes] = []
    fail_uid: str | None = None

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(body)
        resp = b"{}"
        if self.fail_uid and self.fail_uid.encode() in body:
            resp = (b'{"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["%s"]}, '
                    b'"00081197": {"vr": "US", "Value": [272]}}]}}' % self.fail_uid.encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(resp)))
        self.end_headers()
        self.wfile.write(resp)

    def log_message(self, *args):
        pass


def test_stow_to_local_dicomweb(tmp_path, oblique_series):
    vol, amap = oblique_series
    pm = write_parametric_map(amap, vol, tmp_path / "pm.dcm", **_uids("pm"))
    seg = write_segmentation(_graded(amap), vol, tmp_path / "seg.dcm", labels=GRADE_LABELS, **_uids("seg"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeStow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/dicom-web"
    try:
        res = stow(url, [pm, seg], batch_size=1)
        assert res.stored == [pydicom.dcmread(p).SOPInstanceUID for p in (pm, seg)] and res.failed == []
        assert len(_FakeStow.received) == 2 and b"application/dicom" in _FakeStow.received[0]
        _FakeStow.fail_uid = str(pydicom.dcmread(seg).SOPInstanceUID)
        with pytest.raises(StowError, match="refused 1 of 2") as err:
            stow(url, [pm, seg])
        assert err.value.result.failed == [(_FakeStow.fail_uid, "272")]
    finally:
        server.shutdown()


def test_outputs_for_enhanced_multiframe_source(tmp_path, small_ct):
    hu, _, affine = small_ct
    files = write_dicom_series(hu, oblique_affine(), tmp_path / "single", seed="mf-out")
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=[pydicom.dcmread(f) for f in files], series_instance_uid=hd.UID(), series_number=60,
        sop_instance_uid=hd.UID(), instance_number=1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    vol = load_volume(tmp_path / "enhanced.dcm")
    amap = vol.clone()
    amap[0] = torch.linspace(0, 1, vol[0].numel()).reshape(vol[0].shape)
    pm = hd.imread(write_parametric_map(amap, vol, tmp_path / "out" / "pm.dcm", **_uids("pm")))
    assert pm.ReferencedSeriesSequence[0].SeriesInstanceUID == enhanced.SeriesInstanceUID
    np.testing.assert_allclose(metatensor_from_hd_volume(pm.get_volume(dtype=np.float32)).numpy(), amap.numpy())
    seg = hd.seg.segread(write_segmentation(_graded(amap), vol, tmp_path / "out" / "seg.dcm", labels=GRADE_LABELS,
                                            **_uids("seg")))
    back = metatensor_from_hd_volume(seg.get_volume(combine_segments=True))
    np.testing.assert_array_equal(back[0].numpy(), grade(amap[0].numpy(), THRESHOLDS))


def test_orientation_rounding_noise_between_slices(tmp_path, small_ct):
    """Slices whose ImageOrientationPatient differs by ~1e-6 (rounding) still load and get a PM."""
    hu, _, affine = small_ct
    files = write_dicom_series(hu, affine, tmp_path / "s", seed="iop")
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        iop = [float(v) for v in ds.ImageOrientationPatient]
        iop[1] += 1e-6 * k
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.save_as(f)
    vol = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol[0].numpy(), hu)
    pm = hd.imread(write_parametric_map(vol / 100.0, vol, tmp_path / "pm.dcm", **_uids("pm")))
    assert int(pm.NumberOfFrames) == SHAPE[2]


def test_missing_frame_of_reference(tmp_path, small_ct):
    """Anonymizers sometimes drop FrameOfReferenceUID: the volume still loads, DICOM outputs are refused clearly."""
    hu, _, affine = small_ct
    files = write_dicom_series(hu, affine, tmp_path / "s", seed="nofor")
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    vol = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol[0].numpy(), hu)
    np.testing.assert_allclose(vol.affine.numpy(), affine, atol=1e-5)
    assert vol.meta["frame_of_reference_uid"] == ""
    with pytest.raises(ValueError, match="no FrameOfReferenceUID"):
        write_parametric_map(vol, vol, tmp_path / "pm.dcm", **_uids("pm"))


def test_overlay_display_does_not_depend_on_voxel_order(tmp_path, small_ct):
    """The same anatomy stored flipped or transposed gives the same picture (radiological display from the affine)."""
    from PIL import Image

    hu, mask, affine = small_ct
    a = MetaTensor(torch.from_numpy(hu)[None], affine=torch.as_tensor(affine), meta={"modality": "CT"})
    m = MetaTensor(torch.from_numpy(mask.astype(np.float32))[None], affine=torch.as_tensor(affine))
    flipped = Orientation(axcodes="RAS", labels=None)  # X, Y reversed vs. the LPS-ordered input
    swapped = Orientation(axcodes="PRS", labels=None)  # X and Y exchanged as well
    k = int(np.argmax(mask.sum((0, 1))))
    ref = np.asarray(Image.open(save_overlay_png(a, m, tmp_path / "ref.png", k)))
    for name, t in (("flipped", flipped), ("swapped", swapped)):
        other = np.asarray(Image.open(save_overlay_png(t(a), t(m), tmp_path / f"{name}.png", k)))
        np.testing.assert_array_equal(other, ref, err_msg=name)
