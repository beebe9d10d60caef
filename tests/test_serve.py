"""Web service: REST API, hostile input, auth/CORS, DICOM handling, the OOD guard and its flag rates."""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lungct.data import dicom as dicomio
from lungct.data import oodsets
from lungct.data.oodsets import encode
from lungct.data.phantoms import make_phantom
from lungct.data.slices import decode_slice as decode_upload
from lungct.model.predictor import Predictor
from lungct.serve import create_app
from lungct.serve.service import Workstation, limit_backward

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

SECRET_NAME = "Doe^Jane_1970-01-01.png"


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run)


@pytest.fixture(scope="module")
def client(predictor, tiny_run) -> TestClient:
    return TestClient(base_url="http://127.0.0.1", app=create_app(predictor, run_dir=tiny_run))


def phantom_bytes(kind: str = "malignant", seed: int = 0, fmt: str = "PNG", size: int = 96) -> bytes:
    return encode(make_phantom(kind, size, seed)[0], fmt)


def ct_small() -> bytes:
    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's CT_small.dcm test file is not available")
    return Path(path).read_bytes()


def dicom_variant(**changes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(ct_small()))
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def visible_text(resp) -> str:
    """Response JSON without its base64 images (random base64 can contain any short word)."""

    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k != "explanation"}
        return [strip(v) for v in o] if isinstance(o, list) else o

    return json.dumps(strip(resp.json()))


def png_size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
    return buf.getvalue()


# ------------------------------------------------------------------ predict


def test_predict_png_with_gradcam(client, predictor):
    r = client.post("/api/v1/predict", files={"file": (SECRET_NAME, phantom_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["assessed"] is True and d["ood"]["flagged"] is False
    assert set(d["probabilities"]) == {"normal", "benign", "malignant"}
    assert abs(sum(d["probabilities"].values()) - 1) < 1e-3
    assert d["threshold"] == pytest.approx(predictor.threshold)
    expected = "malignant" if d["malignant_probability"] >= d["threshold"] else None
    assert expected is None or d["decision"] == expected
    assert d["decision"] in ("normal", "benign", "malignant")
    assert d["model"] == {"name": "small_cnn", "version": predictor.version}
    assert d["image"] == {"width": 96, "height": 96, "format": "PNG"}
    ex = d["explanation"]
    assert ex["method"] == "gradcam" and ex["target_class"] == d["decision"]
    for key in ("image_png", "heatmap_png", "overlay_png"):
        assert png_size(ex[key]) == (96, 96)
    assert Image.open(io.BytesIO(base64.b64decode(ex["heatmap_png"]))).mode == "RGBA"
    assert "Doe" not in visible_text(r) and d["disclaimer"].startswith("Research use only")
    assert r.headers["x-request-id"] == d["request_id"]


def test_predict_matches_predictor(client, predictor):
    data = phantom_bytes("benign", 3, "JPEG")
    r = client.post("/api/v1/predict?explain=false", files={"file": ("x.jpg", data, "image/jpeg")})
    assert r.status_code == 200
    d = r.json()
    assert d["explanation"] is None and d["image"]["format"] == "JPEG"
    pred, _ = predictor.predict_bytes(data)
    assert d["malignant_probability"] == pytest.approx(pred.malignant_probability, abs=1e-5)
    assert d["decision"] == pred.decision


def test_predict_dicom_ct_small(client):
    r = client.post("/api/v1/predict", files={"file": ("scan.dcm", ct_small(), "application/dicom")})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["image"] == {"width": 128, "height": 128, "format": "DICOM"}
    assert d["assessed"] is True, d["ood"]
    assert png_size(d["explanation"]["image_png"]) == (128, 128)
    for tag_value in ("CompressedSamples", "CT1"):  # PatientName of the test file
        assert tag_value not in visible_text(r)


def test_type_by_content_not_extension(client):
    r = client.post("/api/v1/predict", files={"file": ("slice.dcm", phantom_bytes(), "application/dicom")})
    assert r.status_code == 200 and r.json()["image"]["format"] == "PNG"
    r = client.post("/api/v1/predict", files={"file": ("slice.jpg", b"just some text\n" * 20, "image/jpeg")})
    assert r.status_code == 415
    assert "unsupported file type" in r.json()["detail"]


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("name", "payload", "status", "words"),
    [
        ("empty.png", b"", 422, "empty"),
        ("truncated.jpg", phantom_bytes(fmt="JPEG")[:300], 422, "image"),
        ("bomb.png", _bomb_png(), 422, "image"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, "image"),
        ("archive.zip", zip_bytes({"a.png": b"x"}), 415, "studies"),
    ],
)
def test_hostile_single_uploads_are_4xx(client, name, payload, status, words):
    r = client.post("/api/v1/predict", files={"file": (name, payload, "application/octet-stream")})
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["detail"] and "Traceback" not in r.text and body["request_id"]


def test_upload_size_limit(predictor):
    c = TestClient(base_url="http://127.0.0.1", app=create_app(predictor, max_upload_mb=0.05))
    big = encode(np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8))
    assert len(big) > 0.05 * 2**20
    r = c.post("/api/v1/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "too large" in r.json()["detail"]

    def chunks():  # no Content-Length: the streamed body is counted instead
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(20):
            yield b"\x00" * 8192

    r = c.post(
        "/api/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 413


def test_missing_field_is_clear_422(client):
    r = client.post("/api/v1/predict", data={"other": "1"})
    assert r.status_code == 422 and "file" in r.json()["detail"]


def test_ood_input_gets_no_diagnosis(client):
    for data in (
        encode(np.zeros((64, 64), np.uint8)),
        oodsets.make_set("photo_colour", 1)[0],
        oodsets.make_set("text", 1, seed=3)[0],
    ):
        r = client.post("/api/v1/predict", files={"file": ("x", data, "image/png")})
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["assessed"] is False and d["ood"]["flagged"] is True and d["ood"]["reason"]
        assert d["decision"] is None and d["probabilities"] is None and d["explanation"] is None
        assert d["decision_text"].startswith("not assessed")


def test_unexpected_error_is_generic_500(predictor):
    app = create_app(predictor)

    def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    app.state.workstation.predict = boom
    c = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    r = c.post("/api/v1/predict", files={"file": ("x.png", phantom_bytes(), "image/png")})
    assert r.status_code == 500
    assert "secret" not in r.text and "Traceback" not in r.text and "internal error" in r.json()["detail"]


# ------------------------------------------------------------------ studies


def test_study_of_several_slices(client):
    files = [
        ("files", (f"Smith^John_{k}.png", phantom_bytes(kind, k), "image/png"))
        for k, kind in enumerate(["normal", "malignant", "benign", "malignant"])
    ]
    files.append(("files", ("blank.png", encode(np.zeros((64, 64), np.uint8)), "image/png")))
    r = client.post("/api/v1/studies?explain_top=2&mixed=allow", files=files)
    assert r.status_code == 200, r.text
    d = r.json()
    assert [s["label"] for s in d["slices"]] == [f"slice {k}" for k in range(1, 6)]
    # Traceability: each slice keeps its source name (returned to the uploader, never logged).
    assert [s["source"] for s in d["slices"]] == [f"Smith^John_{k}.png" for k in range(4)] + ["blank.png"]
    assert "may hold" in d["warnings"][0]  # different phantom patients, analysed as one case on request
    assert d["order"] == "upload"
    case = d["case"]
    assert case["n_slices"] == 5 and case["n_assessed"] == 4 and case["n_not_assessed"] == 1
    assert d["slices"][4]["assessed"] is False and any("not assessed" in w for w in d["warnings"])
    pm = [s["malignant_probability"] for s in d["slices"] if s["assessed"]]
    assert case["max_malignant_probability"] == pytest.approx(max(pm), abs=1e-6)
    assert case["mean_malignant_probability"] == pytest.approx(np.mean(pm), abs=1e-6)
    assert (case["decision"] == "malignant") == (np.mean(pm) >= case["threshold"])
    assert case["n_above_threshold"] == sum(p >= case["threshold"] for p in pm)
    top_p = [d["slices"][i - 1]["malignant_probability"] for i in d["top"]]
    assert len(d["top"]) == 4 and top_p == sorted(top_p, reverse=True)
    assert case["most_suspicious_slice"] == d["top"][0]
    explained = [s["index"] for s in d["slices"] if s["explanation"]]
    assert sorted(explained) == sorted(d["top"][:2])


def test_zip_study_skips_junk_and_reads_in_memory(client):
    members = {
        "series/": b"",
        "__MACOSX/._a.png": b"junk",
        "series/.DS_Store": b"junk",
        "series/a.png": phantom_bytes("normal", 1),
        "series/b.jpg": phantom_bytes("benign", 2, "JPEG"),
        "series/c.png": phantom_bytes("malignant", 3),
    }
    r = client.post(
        "/api/v1/studies?mixed=allow",
        files={"files": ("Doe^Jane.zip", zip_bytes(members), "application/zip")},
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["case"]["n_slices"] == 3
    names = [f"Doe^Jane.zip/series/{n}" for n in ("a.png", "b.jpg", "c.png")]
    assert [s["source"] for s in d["slices"]] == names


def test_zip_path_traversal_refused(client):
    for name in ("../evil.png", "/etc/evil.png", "a/../../evil.png", "C:/evil.png"):
        r = client.post(
            "/api/v1/studies", files={"files": ("s.zip", zip_bytes({name: phantom_bytes()}), "x")}
        )
        assert r.status_code == 422 and "path" in r.json()["detail"], name


def test_zip_bombs_refused(predictor):
    c = TestClient(
        base_url="http://127.0.0.1", app=create_app(predictor, max_upload_mb=1, max_study_mb=4, max_slices=20)
    )
    huge = zip_bytes({"zeros.png": b"\x00" * (6 * 2**20)})  # 6 MB of zeros -> a few KB compressed
    assert len(huge) < 100_000
    r = c.post("/api/v1/studies", files={"files": ("z.zip", huge, "application/zip")})
    assert r.status_code == 413 and "MB" in r.json()["detail"]
    many = zip_bytes({f"s{k}.png": b"x" for k in range(25)})
    r = c.post("/api/v1/studies", files={"files": ("z.zip", many, "application/zip")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = c.post(
        "/api/v1/studies", files={"files": ("z.zip", b"PK\x03\x04" + b"\x00" * 100, "application/zip")}
    )
    assert r.status_code == 422


def test_case_rule_mean_and_review_hint():
    from lungct.data.ood import OODResult
    from lungct.model.decision import DecisionRule
    from lungct.model.predictor import Prediction
    from lungct.serve.service import Slice, SliceOutcome, case_summary

    def outcome(p_mal: float | None) -> SliceOutcome:
        s = Slice(
            np.zeros((8, 8), np.float32), "PNG", OODResult(p_mal is None, "x" if p_mal is None else None)
        )
        pred = None if p_mal is None else Prediction(np.array([1 - p_mal, 0.0, p_mal]), rule, None)
        return SliceOutcome(s, pred)

    rule = DecisionRule(0.5, 0.5, "mean")
    case = case_summary([outcome(0.9), outcome(0.1), outcome(0.2), outcome(None)], rule)
    assert case["decision"] == "normal" and case["n_above_threshold"] == 1 and case["n_assessed"] == 3
    assert case["most_suspicious_slice"] == 1 and "review" in case["decision_text"]
    assert case["max_malignant_probability"] == pytest.approx(0.9)
    assert case["aggregation"] == "mean" and case["case_probabilities"]["malignant"] == pytest.approx(0.4)
    assert case_summary([outcome(0.9), outcome(0.6)], rule)["decision"] == "malignant"
    assert case_summary([outcome(None)], rule)["decision"] is None
    # The run's case rule is the one applied: with 'max' one suspicious slice flags the case.
    max_rule = DecisionRule(0.5, 0.5, "max")
    assert case_summary([outcome(0.9), outcome(0.1), outcome(0.2)], max_rule)["decision"] == "malignant"


def test_study_with_unreadable_member_names_its_position(client):
    files = [
        ("files", ("a.png", phantom_bytes(), "image/png")),
        ("files", ("b.png", b"GIF89a....", "image/gif")),
    ]
    r = client.post("/api/v1/studies", files=files)
    assert r.status_code == 415 and "b.png" not in r.text


def test_dicom_series_sorted_by_position(client):
    zs = [10.0, -5.0, 2.5, 0.0]
    files = [
        (
            "files",
            (
                f"IM{k}.dcm",
                dicom_variant(ImagePositionPatient=[0.0, 0.0, z], InstanceNumber=k + 1),
                "application/dicom",
            ),
        )
        for k, z in enumerate(zs)
    ]
    r = client.post("/api/v1/studies", files=files)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["order"] == "position"
    assert [s["position_mm"] for s in d["slices"]] == [0.0, 5.0, 7.5, 15.0]
    assert all(s["image"]["format"] == "DICOM" for s in d["slices"])


def test_zipped_dicom_series_and_dicom_bomb(client):
    members = {
        f"IM{k}": dicom_variant(ImagePositionPatient=[0.0, 0.0, z]) for k, z in enumerate([3.0, 1.0, 2.0])
    }
    r = client.post("/api/v1/studies", files={"files": ("series.zip", zip_bytes(members), "application/zip")})
    assert r.status_code == 200, r.text
    assert r.json()["order"] == "position"
    assert [s["position_mm"] for s in r.json()["slices"]] == [0.0, 1.0, 2.0]
    r = client.post(
        "/api/v1/predict", files={"file": ("x.dcm", dicom_variant(Rows=60000, Columns=60000), "x")}
    )
    assert r.status_code == 422 and "limit" in r.json()["detail"]


def test_dicom_series_by_instance_without_geometry():
    slices = []
    for inst in (3, 1, 2):
        ds = pydicom.dcmread(io.BytesIO(dicom_variant(InstanceNumber=inst)))
        del ds.ImagePositionPatient
        buf = io.BytesIO()
        ds.save_as(buf)
        slices.append(dicomio.read_slice(buf.getvalue()))
    order, basis = dicomio.series_order(slices)
    assert basis == "instance" and order == [1, 2, 0]
    assert dicomio.series_order([slices[0], None]) == ([0, 1], "upload")


# ------------------------------------------------------------------ model, auth, CORS, schema, logs


def test_model_card_and_health(client):
    card = client.get("/api/v1/model").json()
    assert card["name"] == "small_cnn" and card["classes"] == ["normal", "benign", "malignant"]
    assert card["run"]["model"] == "small_cnn" and card["metrics"] is not None
    assert client.get("/healthz").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and 'id="file-input"' in page.text and "Research use only" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert "http" not in page.text.replace('href="/', "")  # no external (CDN) resources


def test_openapi_lists_endpoints(client):
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/predict", "/api/v1/studies", "/api/v1/model", "/healthz"):
        assert path in schema["paths"]
    assert "PredictResponse" in schema["components"]["schemas"]
    assert "413" in schema["paths"]["/api/v1/predict"]["post"]["responses"]


def test_bearer_token(predictor):
    c = TestClient(base_url="http://127.0.0.1", app=create_app(predictor, token="s3cret"))
    assert c.get("/api/v1/model").status_code == 401
    assert c.get("/api/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = c.post("/api/v1/predict", files={"file": ("x.png", phantom_bytes(), "image/png")})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert c.get("/api/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


def test_cors_off_by_default(client, predictor):
    r = client.get("/api/v1/model", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    c = TestClient(
        base_url="http://127.0.0.1", app=create_app(predictor, cors_origins=["http://ward.example"])
    )
    r = c.get("/api/v1/model", headers={"Origin": "http://ward.example"})
    assert r.headers["access-control-allow-origin"] == "http://ward.example"


def test_logs_carry_no_file_names(client, caplog):
    with caplog.at_level(logging.INFO, logger="lungct.serve"):
        client.post("/api/v1/predict", files={"file": (SECRET_NAME, phantom_bytes(), "image/png")})
        client.post("/api/v1/predict", files={"file": ("scan.dcm", ct_small(), "application/dicom")})
    assert "/api/v1/predict" in caplog.text
    for secret in ("Doe", "Jane", "CompressedSamples", "scan.dcm"):
        assert secret not in caplog.text


def test_unknown_explain_method_refused(predictor):
    from lungct.errors import LungctError

    with pytest.raises(LungctError, match="unknown explanation method"):
        create_app(predictor, explain_method="magic")


def test_concurrent_predictions_are_consistent(predictor):
    ws = Workstation(predictor)
    s = decode_upload(phantom_bytes("malignant", 5))
    ref = ws.predict(s)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: ws.predict(s), range(8)))
    for o in outs:
        np.testing.assert_allclose(o.prediction.probs, ref.prediction.probs, atol=1e-5)
        assert o.explanation["heatmap_png"] == ref.explanation["heatmap_png"]


def test_limit_backward_keeps_heatmaps(tiny_run):
    from lungct.explain.cam import explain_image, target_layer

    full, limited = Predictor.from_run(tiny_run), Predictor.from_run(tiny_run)
    img = decode_upload(phantom_bytes("malignant", 2)).image
    assert limit_backward(limited)
    trainable = {id(q) for q in limited.net.parameters() if q.requires_grad}
    assert trainable == {id(q) for q in target_layer(limited).parameters()}
    for target in ("malignant", "normal"):
        a = explain_image(full, img, target=target).heatmap
        b = explain_image(limited, img, target=target).heatmap
        np.testing.assert_allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------ DICOM helpers and guard


def test_deidentify_strips_identifiers():
    ds = pydicom.dcmread(io.BytesIO(ct_small()))
    old_uid = ds.SOPInstanceUID
    ds.add_new((0x0009, 0x0010), "LO", "ACME private")
    dicomio.deidentify(ds)
    assert ds.PatientName == "" and ds.PatientID == "" and ds.PatientBirthDate == ""
    for kw in ("InstitutionName", "OtherPatientIDsSequence", "PatientAge", "ReferringPhysicianName"):
        assert not ds.get(kw)
    assert ds.SOPInstanceUID != old_uid and ds.PatientIdentityRemoved == "YES"
    assert (0x0009, 0x0010) not in ds


def test_dicom_guard():
    assert decode_upload(ct_small()).guard.flagged is False
    mr = get_testdata_file("MR_small.dcm")
    if mr is not None:
        g = decode_upload(Path(mr).read_bytes()).guard
        assert g.flagged and "MR" in g.reason
    assert decode_upload(dicom_variant(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])).guard.flagged
    sagittal = decode_upload(dicom_variant(ImageOrientationPatient=[0, 1, 0, 0, 0, -1])).guard
    assert sagittal.flagged and "axial" in sagittal.reason


def _flag_rate(blobs: list[bytes]) -> float:
    return float(np.mean([decode_upload(b).guard.flagged for b in blobs]))


@pytest.mark.parametrize("name", [*oodsets.GENERATED, *oodsets.REAL])
def test_ood_sets_mostly_flagged(name):
    assert _flag_rate(oodsets.make_set(name, 30, seed=1)) >= 0.9


def test_phantoms_mostly_not_flagged():
    rng = np.random.default_rng(7)
    blobs = [
        encode(
            make_phantom(["normal", "benign", "malignant"][k % 3], int(rng.choice([64, 128, 256])), rng)[0],
            "PNG" if k % 2 else "JPEG",
        )
        for k in range(60)
    ]
    assert _flag_rate(blobs) <= 0.02


def test_guard_accepts_12_bit_data_in_16_bit_files():
    img = make_phantom("normal", 128, 4)[0].astype(np.uint16) * 16  # 0..4080 of 65535
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    s = decode_upload(buf.getvalue())
    assert s.image.max() < 0.07 and not s.guard.flagged, s.guard


@pytest.mark.shared_data
def test_real_ct_rarely_flagged(shared_data_dir):
    files = sorted(p for p in shared_data_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        pytest.skip(f"no images under {shared_data_dir}")
    flags = [decode_upload(f.read_bytes()).guard for f in files]
    assert all(not g.flagged or g.checks["colour_fraction"] == 0 for g in flags)
    assert np.mean([g.flagged for g in flags]) <= 0.02
