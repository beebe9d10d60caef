"""Workstation v2 API: any slice viewable (raw pixels, lazy Grad-CAM), source names, multi-scan uploads,
progress/cancel, reader feedback, and the operating point / known limits read from the run's metrics."""

from __future__ import annotations

import base64
import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lungct.data.oodsets import encode
from lungct.data.phantoms import make_series
from lungct.model.decision import DecisionRule
from lungct.model.predictor import Predictor
from lungct.serve import create_app
from lungct.serve.metrics_text import known_limits, operating_point
from lungct.serve.scans import audit_threshold, content_groups
from lungct.serve.service import StudyStore
from lungct.serve.uploads import MAX_NAME, source_name

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run)


@pytest.fixture(scope="module")
def feedback_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fb") / "reader" / "feedback.jsonl"


@pytest.fixture(scope="module")
def client(predictor, tiny_run, feedback_path) -> TestClient:
    app = create_app(predictor, run_dir=tiny_run, feedback_log=feedback_path)
    return TestClient(base_url="http://127.0.0.1", app=app)


def series(kind: str, n: int, seed: int, size: int = 96) -> list[np.ndarray]:
    return [img for img, _ in make_series(kind, n, size, seed)]


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def scan_zip(*patients: tuple[str, str, int, int]) -> bytes:
    return zip_of(
        {
            f"{folder}/IMG{k:03d}.png": encode(img, "PNG")
            for folder, kind, seed, n in patients
            for k, img in enumerate(series(kind, n, seed), start=1)
        }
    )


def dicom_bytes(z: float, series_uid: str | None = None, instance: int = 1) -> bytes:
    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's CT_small.dcm test file is not available")
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.InstanceNumber = instance
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def post_zip(client: TestClient, data: bytes, query: str = "", name: str = "scan.zip"):
    return client.post(f"/api/v1/studies{query}", files={"files": (name, data, "application/zip")})


# ------------------------------------------------------------------ every slice viewable


def test_every_slice_has_pixels_and_a_lazy_explanation(client):
    imgs = series("malignant", 6, 11)
    r = post_zip(client, scan_zip(("ct", "malignant", 11, 6)), "?explain_top=0")
    assert r.status_code == 200, r.text
    d = r.json()
    sid = d["study_id"]
    assert all(s["explanation"] is None for s in d["slices"])  # nothing explained up front
    assert [s["source"] for s in d["slices"]] == [f"scan.zip/ct/IMG{k:03d}.png" for k in range(1, 7)]
    for k, img in enumerate(imgs, start=1):  # raw grey pixels of every slice, exactly the upload's
        px = client.get(f"/api/v1/studies/{sid}/slices/{k}/pixels")
        assert px.status_code == 200 and px.headers["x-pixels"] == "grey"
        assert (int(px.headers["x-width"]), int(px.headers["x-height"])) == (96, 96)
        np.testing.assert_array_equal(np.frombuffer(px.content, np.uint8).reshape(96, 96), img)
    # Grad-CAM for a slice that is not among the most suspicious, on demand, in the slice's geometry.
    last = d["top"][-1]
    ex = client.get(f"/api/v1/studies/{sid}/slices/{last}/explanation")
    assert ex.status_code == 200, ex.text
    e = ex.json()
    assert e["target_class"] == d["slices"][last - 1]["decision"]
    heat = Image.open(io.BytesIO(base64.b64decode(e["heatmap_png"])))
    assert heat.size == (96, 96) and heat.mode == "RGBA"
    assert client.get(f"/api/v1/studies/{sid}/slices/{last}/explanation").json() == e  # kept, not recomputed
    again = client.get(f"/api/v1/studies/{sid}")
    assert again.status_code == 200 and again.json()["slices"] == d["slices"]


def test_heat_map_edges_are_smooth(predictor):
    from lungct.serve.service import Workstation, feather

    hard = np.zeros((200, 200), np.float32)
    hard[50:150, 50:150] = 1.0
    soft = feather(hard)
    assert soft.max() <= 1 and np.abs(np.diff(soft, axis=1)).max() < 0.2 < np.abs(np.diff(hard, axis=1)).max()
    ex = Workstation(predictor).explain_one(series("benign", 1, 3, 128)[0].astype(np.float32) / 255, None)
    alpha = np.asarray(Image.open(io.BytesIO(base64.b64decode(ex["heatmap_png"]))))[..., 3].astype(float)
    assert np.abs(np.diff(alpha, axis=0)).max() < 60  # no hard step from full heat to none


def test_dicom_pixels_are_hounsfield_units_with_source(client):
    files = [
        ("files", (f"IM{k}.dcm", dicom_bytes(z, instance=k + 1), "application/dicom"))
        for k, z in enumerate([7.5, 2.5, 5.0])
    ]
    r = client.post("/api/v1/studies?explain_top=0", files=files)
    assert r.status_code == 200, r.text
    d = r.json()
    assert [s["source"] for s in d["slices"]] == ["IM1.dcm", "IM2.dcm", "IM0.dcm"]  # by position
    assert [s["instance_number"] for s in d["slices"]] == [2, 3, 1]
    assert all(s["series_uid"] and s["pixels"] == "hu" for s in d["slices"])
    px = client.get(f"/api/v1/studies/{d['study_id']}/slices/1/pixels")
    hu = np.frombuffer(px.content, "<i2").reshape(int(px.headers["x-height"]), int(px.headers["x-width"]))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu, np.round(expected).astype(np.int16))


def test_unknown_study_and_slice_are_404(client):
    assert client.get("/api/v1/studies/AAAAAAAAAAAA/slices/1/pixels").status_code == 404
    sid = post_zip(client, scan_zip(("a", "normal", 1, 2))).json()["study_id"]
    assert client.get(f"/api/v1/studies/{sid}/slices/3/pixels").status_code == 404
    assert client.get(f"/api/v1/studies/{sid}/slices/0/pixels").status_code == 422
    assert client.get("/api/v1/studies/../x/slices/1/pixels").status_code in (404, 422)


def test_study_store_drops_oldest_beyond_its_pixel_budget():
    from lungct.data.ood import OODResult
    from lungct.data.slices import Slice
    from lungct.serve.service import NotFound, SliceOutcome

    store = StudyStore(max_pixels=3 * 100 * 100)
    sl = [Slice(np.zeros((100, 100), np.float32), "PNG", OODResult(False, None))]
    keys = [store.put(sl, [SliceOutcome(sl[0], None)])[0] for _ in range(4)]
    with pytest.raises(NotFound):
        store.get(keys[0])
    assert store.get(keys[-1]).images[0].dtype == np.float16


# ------------------------------------------------------------------ one scan per case


def test_content_grouping_tells_scans_apart():
    one = [im.astype(np.float32) / 255 for im in series("malignant", 8, 1)]
    two = [im.astype(np.float32) / 255 for im in series("normal", 5, 2)]
    assert content_groups(one) == [0] * 8
    assert content_groups(one + two) == [0] * 8 + [1] * 5
    mixed = [one[0], two[0], one[1], two[1], one[2]]
    assert content_groups(mixed) == [0, 1, 0, 1, 0]
    # exact copies stay together even below every threshold; a lone slice is not chained to a
    # dissimilar scan by nearest-neighbour links (the floor)
    assert content_groups([*two, one[0], one[0].copy()], threshold=0.999) == [0] * 5 + [1, 1]
    assert content_groups([*two, one[0]]) == [0] * 5 + [1]


def test_mixed_zip_refused_with_the_scans_named(client):
    data = scan_zip(("p1", "malignant", 1, 5), ("p2", "normal", 2, 4))
    r = post_zip(client, data, name="mixed.zip")
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "2 scans" in detail and "image content" in detail
    assert (
        "scan 1: 5 slices (mixed.zip/p1/IMG001.png" in detail and "scan 2: 4 slices (mixed.zip/p2/" in detail
    )


def test_mixed_zip_split_into_cases(client):
    r = post_zip(client, scan_zip(("p1", "malignant", 1, 5), ("p2", "normal", 2, 4)), "?mixed=split")
    assert r.status_code == 200, r.text
    d = r.json()
    assert [s["n_slices"] for s in d["scans"]] == [5, 4] and d["scan"] == 1
    assert d["case"]["n_slices"] == 5 and "held 2 scans" in d["warnings"][0]
    second = client.get(f"/api/v1/studies/{d['scans'][1]['study_id']}").json()
    assert second["scan"] == 2 and second["case"]["n_slices"] == 4
    assert all(s["source"].startswith("scan.zip/p2/") for s in second["slices"])
    allowed = post_zip(client, scan_zip(("p1", "malignant", 1, 3), ("p2", "normal", 2, 3)), "?mixed=allow")
    assert allowed.json()["case"]["n_slices"] == 6 and "may hold 2 scans" in allowed.json()["warnings"][0]


def test_two_dicom_series_are_two_scans(client):
    files = [
        ("files", (f"a{k}.dcm", dicom_bytes(float(k), "1.2.3.4.1"), "application/dicom")) for k in range(2)
    ] + [("files", (f"b{k}.dcm", dicom_bytes(float(k), "1.2.3.4.2"), "application/dicom")) for k in range(3)]
    r = client.post("/api/v1/studies", files=files)
    assert r.status_code == 422 and "2 scans" in r.json()["detail"] and "DICOM series" in r.json()["detail"]
    r = client.post("/api/v1/studies?mixed=split", files=files)
    assert [s["n_slices"] for s in r.json()["scans"]] == [2, 3]
    assert {s["series_uid"] for s in r.json()["slices"]} == {"1.2.3.4.1"}


def test_audit_threshold_comes_from_the_run(tiny_run, tmp_path):
    audit = json.loads((tiny_run / "audit" / "audit.json").read_text())
    assert audit_threshold(tiny_run) == pytest.approx(audit["groups"]["threshold"])
    from lungct.data.audit import DEFAULT_THRESHOLD

    assert audit_threshold(tmp_path) == DEFAULT_THRESHOLD


def test_source_names_sanitised_and_never_logged(client, caplog):
    assert source_name("a\\b/c\x00\x1b[31m.png") == "a/b/c[31m.png"
    long = source_name("x" * 500 + ".png")
    assert len(long) == MAX_NAME and long.endswith(".png")
    with caplog.at_level(logging.INFO, logger="lungct.serve"):
        r = post_zip(client, scan_zip(("Doe^Jane", "normal", 4, 2)), name="Smith_1970.zip")
        client.get(f"/api/v1/studies/{r.json()['study_id']}/slices/1/pixels")
    assert r.json()["slices"][0]["source"] == "Smith_1970.zip/Doe^Jane/IMG001.png"
    assert "/api/v1/studies" in caplog.text
    for secret in ("Doe", "Smith", "IMG001"):
        assert secret not in caplog.text


# ------------------------------------------------------------------ progress and cancel


def test_progress_and_cancel(client):
    pid = "progress-test-1"
    r = post_zip(client, scan_zip(("a", "benign", 5, 4)), f"?progress_id={pid}")
    assert r.status_code == 200
    assert client.get(f"/api/v1/progress/{pid}").json() == {
        "stage": "done",
        "done": 4,
        "total": 4,
        "cancelled": False,
    }
    pid = "progress-test-2"
    assert client.post(f"/api/v1/progress/{pid}/cancel").json()["cancelled"] is True
    r = post_zip(client, scan_zip(("a", "benign", 5, 4)), f"?progress_id={pid}")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    assert client.get("/api/v1/progress/bad%20id").status_code == 422


# ------------------------------------------------------------------ reader feedback


def test_reader_feedback_stored_locally_without_identifiers(client, feedback_path, predictor):
    r = post_zip(client, scan_zip(("Doe^Jane", "malignant", 6, 3)), name="ACC123.zip")
    sid = r.json()["study_id"]
    out = client.post("/api/v1/feedback", json={"study_id": sid, "agree": False, "reader_class": "benign"})
    assert out.status_code == 200, out.text
    line = feedback_path.read_text().splitlines()[-1]
    record = json.loads(line)
    assert record["model_version"] == predictor.version and record["agree"] is False
    assert record["case_decision"] == r.json()["case"]["decision"] and record["reader_class"] == "benign"
    for secret in ("Doe", "ACC123", sid, "IMG"):
        assert secret not in line
    bad = client.post("/api/v1/feedback", json={"study_id": sid, "agree": True, "reader_class": "Dr Who"})
    assert bad.status_code == 422
    off = TestClient(base_url="http://127.0.0.1", app=create_app(predictor))
    assert off.post("/api/v1/feedback", json={"study_id": sid, "agree": True}).status_code == 404
    assert off.get("/api/v1/model").json()["feedback"] is False


# ------------------------------------------------------------------ the truth on the result panel


def test_operating_point_and_limits_read_from_metrics(client, tiny_run):
    metrics = json.loads((tiny_run / "eval" / "test" / "metrics.json").read_text())
    card = client.get("/api/v1/model").json()
    op = card["operating_point"]
    sl = metrics["decision"]["slice"]
    assert op["slice"]["malignant.sensitivity"] == {
        "value": sl["malignant"]["sensitivity"],
        "ci95": sl["ci95"]["malignant.sensitivity"],
    }
    assert op["case"]["n"] == metrics["decision"]["case"]["n"] and op["case_aggregation"] == "mean"
    assert card["known_limits"] == known_limits(metrics)


def test_known_limits_follow_the_numbers():
    def metrics(benign: float, normal: float, spec: float, groups: int) -> dict:
        per = {"benign": {"recall": benign, "n_true": 20}, "normal": {"recall": normal, "n_true": 40}}
        per["malignant"] = {"recall": 0.99, "n_true": 60}
        block = {
            "n": 120,
            "n_groups": groups,
            "per_class": per,
            "malignant": {"sensitivity": 0.99, "specificity": spec},
        }
        block["ci95"] = {"per_class.benign.recall": [0.1, 0.4]}
        return {"decision": {"slice": block, "case": block, "rule": {"fitted_on": "x"}}}

    weak = known_limits(metrics(0.26, 0.7, 0.88, 12))
    assert any("Benign disease is rarely detected" in s and "26%" in s and "0.10–0.40" in s for s in weak)
    assert any("30% of normal slices" in s for s in weak) and any("12%" in s for s in weak)
    assert any("only 12 held-out scans" in s for s in weak)
    strong = known_limits(metrics(0.8, 0.95, 0.98, 80))
    assert not any("rarely" in s or "normal slices" in s or "held-out scans" in s for s in strong)
    assert "no test-split metrics" in known_limits(None)[0]
    assert operating_point(None, DecisionRule(0.2, 0.5, "max"))["slice"] is None
