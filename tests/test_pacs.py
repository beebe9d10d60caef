"""PACS round trip without a PACS: stack checks, series choice, SR / Secondary Capture content,
identifiers, auth options and the watch state file (the Orthanc tests are in test_pacs_orthanc.py)."""

from __future__ import annotations

import io
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

from lungct import CLASSES
from lungct.errors import LungctError
from lungct.model.predictor import Predictor
from lungct.pacs.client import PacsAuth, PacsClient, PacsError, SeriesInfo
from lungct.pacs.identity import LINKING_KEYWORDS
from lungct.pacs.roundtrip import analyse, write_outputs
from lungct.pacs.sr import STATEMENT
from lungct.pacs.study import StudyError, choose_ct_series, study_from_datasets
from lungct.pacs.synthetic import phantom_ct_study
from lungct.pacs.watch import Watcher, WatchState

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run)


def _study(datasets):
    return study_from_datasets(
        str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID), datasets
    )


def test_slices_are_ordered_by_position_whatever_the_arrival_order():
    ds = phantom_ct_study(6, 64, seed=1)
    shuffled = [ds[i] for i in (3, 0, 5, 1, 4, 2)]
    study = _study(shuffled)
    assert study.order == "position"
    assert study.sop_uids == [str(d.SOPInstanceUID) for d in ds]


def test_missing_slice_is_refused():
    ds = phantom_ct_study(6, 64, seed=2)
    with pytest.raises(StudyError, match="missing slice"):
        _study(ds[:2] + ds[3:])


def test_duplicate_slice_position_is_refused():
    ds = phantom_ct_study(5, 64, seed=3)
    dup = phantom_ct_study(1, 64, seed=3, study_uid=str(ds[0].StudyInstanceUID))[0]
    dup.SeriesInstanceUID = ds[0].SeriesInstanceUID
    dup.ImagePositionPatient = list(ds[2].ImagePositionPatient)
    with pytest.raises(StudyError, match="duplicate slice"):
        _study([*ds, dup])


def test_duplicate_sop_instance_is_refused():
    ds = phantom_ct_study(4, 64, seed=4)
    with pytest.raises(StudyError, match="SOP Instance UID appears twice"):
        _study([*ds, ds[1]])


def test_instance_numbers_order_a_stack_without_geometry_and_reveal_gaps():
    ds = phantom_ct_study(5, 64, seed=5)
    for d in ds:
        del d.ImagePositionPatient
    assert _study(list(reversed(ds))).order == "instance"
    with pytest.raises(StudyError, match="missing slice"):
        _study([ds[0], ds[1], ds[3], ds[4]])


def test_mr_series_is_refused():
    ds = phantom_ct_study(3, 64, modality="MR")
    with pytest.raises(StudyError, match="MR instances, not CT"):
        _study(ds)


def test_series_choice_needs_ct_and_skips_own_outputs():
    mr = SeriesInfo("1.2.3", "MR", 20)
    with pytest.raises(StudyError, match=r"no CT series \(found: MR\)"):
        choose_ct_series("1.2.840.1", [mr])
    with pytest.raises(StudyError, match="not found"):
        choose_ct_series("1.2.840.1", [])
    with pytest.raises(StudyError, match="is MR, not CT"):
        choose_ct_series("1.2.840.1", [mr], series_uid="1.2.3")
    small, big = SeriesInfo("1.1", "CT", 5), SeriesInfo("1.2", "CT", 40)
    own = SeriesInfo("1.3", "CT", 99, "lungct something")
    assert choose_ct_series("1.2.840.1", [small, big, own, mr]).uid == "1.2"


def test_no_slice_passing_the_guard_is_not_assessed(predictor):
    ds = phantom_ct_study(3, 64, seed=6)
    for d in ds:
        d.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal
        d.ImagePositionPatient = [float(d.InstanceNumber) * 2.5, 0, 0]
    with pytest.raises(StudyError, match="no slice passed the input guard"):
        analyse(predictor, _study(ds))


def _measurements(group) -> dict[str, float]:
    return {m.name.value: float(m.value) for m in group.get_measurements()}


def test_sr_and_capture_content(predictor, tmp_path):
    ds = phantom_ct_study(8, 64, seed=7, kind="malignant")
    extra = {"PatientAge": "061Y", "InstitutionName": "Nowhere Hospital", "OtherPatientIDs": "X-99"}
    for d in ds:
        for k, v in extra.items():
            setattr(d, k, v)
    study = _study(ds)
    out = analyse(predictor, study, top_k=2)
    preds = predictor.predict_slices(study.slices)
    probs = np.stack([p.probs for p in preds])
    top = np.argsort(-probs[:, 2], kind="stable")[:2]

    # the files parse with pydicom and highdicom
    files = write_outputs(out, tmp_path)
    sr_ds = pydicom.dcmread(files[0])
    sr = hd.sr.ComprehensiveSR.from_dataset(sr_ds)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 3  # case + 2 slices
    case = _measurements(groups[0])
    want = predictor.rule.case_probs(probs)
    for c, p in zip(CLASSES, want, strict=True):
        assert case[f"p-{c}"] == pytest.approx(p, abs=1e-6)
    assert case["threshold-malignant"] == pytest.approx(predictor.rule.malignant_threshold)
    decision = groups[0].get_qualitative_evaluations()[0].value.meaning
    assert out.result["decision"] == predictor.rule.decide_one(want)
    assert decision.lower().startswith(
        {"normal": "normal", "benign": "neoplasm", "malignant": "malignant"}[out.result["decision"]]
    )
    top_uids = [study.sop_uids[i] for i in top]
    assert [s.referenced_sop_instance_uid for s in groups[0].source_images] == top_uids
    for g, i in zip(groups[1:], top, strict=True):
        assert [s.referenced_sop_instance_uid for s in g.source_images] == [study.sop_uids[i]]
        m = _measurements(g)
        assert [m[f"p-{c}"] for c in CLASSES] == pytest.approx(probs[i], abs=1e-6)
    texts = [i.TextValue for i in hd.sr.utils.find_content_items(sr_ds, value_type="TEXT", recursive=True)]
    assert STATEMENT in texts
    assert any(t.startswith("lungct small_cnn") for t in texts)  # algorithm name

    # Secondary Captures: same study, geometry, reference to the source slice, burned-in caption
    for k, f in enumerate(files[1:]):
        sc = pydicom.dcmread(f)
        image = hd.imread(f)  # highdicom parses it as an image
        assert image.SOPClassUID == SECONDARY_CAPTURE and image.get_frame(1).shape == (sc.Rows, sc.Columns, 3)
        src = study.datasets[top[k]]
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
        f_up = sc.Rows // src.Rows
        assert sc.Rows == f_up * src.Rows and sc.Columns == f_up * src.Columns
        assert [float(v) for v in sc.PixelSpacing] == pytest.approx(
            [float(v) / f_up for v in src.PixelSpacing]
        )
        assert list(sc.PatientOrientation) == ["L", "P"]
        px = sc.pixel_array
        assert px.shape == (sc.Rows, sc.Columns, 3)
        band = px[2:12, 2:40].astype(int)  # white caption text on a black band in the top-left
        assert band.min() == 0 and band.max() >= 200
        assert np.abs(band[..., 0] - band[..., 2]).max() < 10  # grey text, not the colour overlay

    # identifiers: the linking attributes of the source, nothing more
    for out_ds in [sr_ds, *(pydicom.dcmread(f) for f in files[1:])]:
        assert out_ds.StudyInstanceUID == ds[0].StudyInstanceUID
        for k in ("PatientID", "PatientName", "AccessionNumber", "StudyID", "StudyDate"):
            assert out_ds.get(k) == ds[0].get(k), k
        for k in extra:
            assert k not in out_ds, k
        assert "StudyDescription" not in out_ds and "StudyDescription" not in LINKING_KEYWORDS
        assert out_ds.SeriesInstanceUID != ds[0].SeriesInstanceUID
    assert out.sr_series_uid != out.sc_series_uid


def test_auth_options(monkeypatch, tmp_path):
    monkeypatch.setenv("LUNGCT_PACS_PASSWORD", "s3cret")
    auth = PacsAuth.from_options("reader")
    assert (auth.username, auth.password) == ("reader", "s3cret")
    assert "s3cret" not in repr(auth)
    monkeypatch.delenv("LUNGCT_PACS_PASSWORD")
    with pytest.raises(PacsError, match="needs a password"):
        PacsAuth.from_options("reader")
    tok = tmp_path / "token"
    tok.write_text("abc\n")
    assert PacsAuth.from_options(token_file=str(tok)).token == "abc"
    client = PacsClient("http://127.0.0.1:1/dicom-web", PacsAuth(token="abc"))
    assert client.session.headers["Authorization"] == "Bearer abc"
    assert client.rest_url == "http://127.0.0.1:1"
    with pytest.raises(PacsError, match="PACS URL must be"):
        PacsClient("ftp://pacs")


def test_watch_state_file_round_trip_and_corruption(tmp_path):
    path = tmp_path / "state.json"
    st = WatchState(path)
    st.done["1.2.3"] = {"decision": "normal"}
    st.save()
    assert WatchState(path).done == {"1.2.3": {"decision": "normal"}}
    assert json.loads(path.read_text())["version"] == 1
    path.write_text("{not json")
    with pytest.raises(LungctError, match="cannot read the watch state file"):
        WatchState(path)


def test_part10_bytes_of_outputs_have_a_preamble(predictor, tmp_path):
    study = _study(phantom_ct_study(3, 64, seed=8))
    files = write_outputs(analyse(predictor, study, top_k=1), tmp_path)
    for f in files:
        assert f.read_bytes()[128:132] == b"DICM"
        pydicom.dcmread(io.BytesIO(f.read_bytes()))


def test_watch_survives_an_unreachable_pacs(predictor, tmp_path, caplog):
    from lungct.pacs.orthanc import free_port

    client = PacsClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=2)
    watcher = Watcher(client, predictor, tmp_path / "state.json")
    watcher.run(poll_s=0.01, max_polls=2)  # logs and retries instead of crashing
    assert "cannot reach the PACS" in caplog.text
    assert not (tmp_path / "state.json").exists()


def test_cli_options():
    from lungct.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--run", "r", "--pacs", "http://h/dicom-web", "--pacs-user", "u"]
    )
    assert (args.pacs, args.pacs_user) == ("http://h/dicom-web", "u")
    args = build_parser().parse_args(["pacs", "watch", "--run", "r", "--url", "http://h", "--poll", "5"])
    assert (args.pacs_command, args.poll, args.run) == ("watch", 5.0, "r")
    args = build_parser().parse_args(
        ["pacs", "--run", "r", "--url", "http://h", "--study", "1.2", "--dry-run", "d"]
    )
    assert (args.pacs_command, args.study, args.dry_run) == (None, "1.2", "d")
