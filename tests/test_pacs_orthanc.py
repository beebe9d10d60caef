"""The PACS round trip against a REAL Orthanc (DICOMweb plugin) started on 127.0.0.1 for each test.

Skipped only when the Orthanc binary or its DICOMweb plugin is absent (Debian: orthanc,
orthanc-dicomweb; `.ci/run` installs them).
"""

from __future__ import annotations

import json
import logging

import highdicom as hd
import pydicom
import pytest

from lungct import CLASSES
from lungct.cli import main
from lungct.model.predictor import Predictor
from lungct.pacs.client import PacsAuth, PacsAuthError, PacsClient, PacsStoreError, PacsUnreachable
from lungct.pacs.orthanc import LocalOrthanc, find_dicomweb_plugin, find_orthanc, free_port
from lungct.pacs.roundtrip import analyse, round_trip
from lungct.pacs.study import StudyError, load_ct_study
from lungct.pacs.synthetic import phantom_ct_study
from lungct.pacs.watch import Watcher, WatchState

pytestmark = pytest.mark.skipif(
    find_orthanc() is None or find_dicomweb_plugin() is None,
    reason="Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)",
)

REJECT_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
  local d = dicom.SeriesDescription
  if d ~= nil and string.find(d, "%s", 1, true) then
    return false
  end
  return true
end
"""


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """One Orthanc for the tests that only look at their own studies."""
    with LocalOrthanc(tmp_path_factory.mktemp("orthanc")) as o:
        yield o


@pytest.fixture
def fresh_orthanc(tmp_path):
    """An empty Orthanc of its own, for tests that look at every study on the PACS."""
    with LocalOrthanc(tmp_path / "orthanc") as o:
        yield o


def upload(client: PacsClient, datasets) -> str:
    uid = str(datasets[0].StudyInstanceUID)
    client.store(datasets, uid)
    return uid


def n_studies(client: PacsClient) -> int:
    return len(client.studies(modality=None))


def test_round_trip_stores_sr_and_capture_into_the_same_study(
    orthanc, predictor, tiny_run, tmp_path, capsys, caplog
):
    client = PacsClient(orthanc.dicomweb_url)
    source = phantom_ct_study(10, 64, kind="malignant", seed=11)
    shuffled = source[5:] + source[:5]
    uid = upload(client, shuffled)
    studies_before = n_studies(client)
    caplog.set_level(logging.DEBUG)
    res = round_trip(client, predictor, uid, top_k=2)

    # both outputs are new series of the SAME study (and no new study or patient appeared)
    series = {s.uid: s for s in client.series(uid)}
    assert n_studies(client) == studies_before
    assert set(series) == {str(source[0].SeriesInstanceUID), *res["stored"].values()}
    assert series[res["stored"]["sr_series_uid"]].modality == "SR"
    assert series[res["stored"]["sc_series_uid"]].n_instances == 2

    # they parse with pydicom and highdicom (fetched back over WADO-RS)
    (sr_ds,) = client.retrieve_series(uid, res["stored"]["sr_series_uid"])
    captures = client.retrieve_series(uid, res["stored"]["sc_series_uid"])
    sr = hd.sr.ComprehensiveSR.from_dataset(sr_ds)
    groups = sr.content.get_image_measurement_groups()
    for ds in (sr_ds, *captures):
        assert ds.StudyInstanceUID == uid and ds.PatientID == source[0].PatientID

    # the class and probabilities are those `lungct predict` gives for the same pixels
    folder = tmp_path / "ct"
    folder.mkdir()
    for k, ds in enumerate(source):  # source is in position order
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    assert main(["predict", "--run", str(tiny_run), "--image", str(folder), "--json"]) in (0, 1)
    predicted = json.loads(capsys.readouterr().out)["predictions"]
    by_uid = {str(ds.SOPInstanceUID): p for ds, p in zip(source, predicted, strict=True)}
    top = res["top_slices"]
    assert [g.tracking_identifier for g in groups[1:]] == [
        "lungct suspicious slice 1",
        "lungct suspicious slice 2",
    ]
    for t, g in zip(top, groups[1:], strict=True):
        p = by_uid[t["sop_instance_uid"]]
        assert t["decision"] == p["decision"]
        assert [s.referenced_sop_instance_uid for s in g.source_images] == [t["sop_instance_uid"]]
        m = {x.name.value: float(x.value) for x in g.get_measurements()}
        for c in CLASSES:
            assert m[f"p-{c}"] == pytest.approx(p["probabilities"][c], abs=2e-6)
    mal = sorted(by_uid.items(), key=lambda kv: -kv[1]["probabilities"]["malignant"])
    assert [t["sop_instance_uid"] for t in top] == [u for u, _ in mal[:2]]
    case_probs = predictor.rule.case_probs(
        [[p["probabilities"][c] for c in CLASSES] for p in predicted]  # type: ignore[arg-type]
    )
    case = {x.name.value: float(x.value) for x in groups[0].get_measurements()}
    assert [case[f"p-{c}"] for c in CLASSES] == pytest.approx(list(case_probs), abs=1e-5)
    assert res["decision"] == predictor.rule.decide_one(case_probs)
    refs = {c.SourceImageSequence[0].ReferencedSOPInstanceUID for c in captures}
    assert refs == {t["sop_instance_uid"] for t in top}

    # nothing identifying in the logs
    assert "PHANTOM" not in caplog.text and str(source[0].PatientID) not in caplog.text


def test_dry_run_writes_files_and_stores_nothing(orthanc, predictor, tmp_path):
    client = PacsClient(orthanc.dicomweb_url)
    uid = upload(client, phantom_ct_study(6, 64, seed=12))
    res = round_trip(client, predictor, uid, dry_run=tmp_path / "out", top_k=1)
    assert res["stored"] is None and len(res["files"]) == 2
    assert [s.modality for s in client.series(uid)] == ["CT"]
    for f in res["files"]:
        assert pydicom.dcmread(f).StudyInstanceUID == uid


def test_unreachable_pacs_is_one_clear_error(predictor):
    client = PacsClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=5)
    with pytest.raises(PacsUnreachable, match=r"cannot reach the PACS at 127\.0\.0\.1"):
        round_trip(client, predictor, "1.2.3.4")


def test_unusable_studies_are_refused_and_nothing_is_written(orthanc, predictor):
    client = PacsClient(orthanc.dicomweb_url)
    mr = upload(client, phantom_ct_study(4, 64, modality="MR", seed=13))
    missing = phantom_ct_study(6, 64, seed=14)
    upload(client, missing[:2] + missing[3:])
    dup = phantom_ct_study(5, 64, seed=15)
    extra = phantom_ct_study(1, 64, seed=15, study_uid=str(dup[0].StudyInstanceUID))[0]
    extra.SeriesInstanceUID, extra.ImagePositionPatient = (
        dup[0].SeriesInstanceUID,
        dup[1].ImagePositionPatient,
    )
    upload(client, [*dup, extra])
    before = {s["study_uid"]: s["n_instances"] for s in client.studies(modality=None)}
    cases = [
        (mr, r"no CT series \(found: MR\)"),
        (str(missing[0].StudyInstanceUID), "missing slice"),
        (str(dup[0].StudyInstanceUID), "duplicate slice"),
        ("1.2.3.999", "not found"),
    ]
    for uid, message in cases:
        with pytest.raises(StudyError, match=message):
            round_trip(client, predictor, uid)
    assert {s["study_uid"]: s["n_instances"] for s in client.studies(modality=None)} == before


@pytest.mark.parametrize("refused", ["lungct Grad-CAM", "lungct result"])
def test_stow_failure_halfway_leaves_nothing(tmp_path, predictor, refused):
    """Orthanc refuses the second (Grad-CAM) or the first (SR) output series: nothing is kept."""
    with LocalOrthanc(tmp_path / "o", lua=REJECT_LUA % refused) as pacs:
        client = PacsClient(pacs.dicomweb_url)
        uid = upload(client, phantom_ct_study(6, 64, seed=16))
        with pytest.raises(PacsStoreError, match="nothing kept"):
            round_trip(client, predictor, uid, top_k=2)
        assert [s.modality for s in client.series(uid)] == ["CT"]


def test_basic_auth(tmp_path, predictor):
    with LocalOrthanc(tmp_path / "o", users={"reader": "s3cret"}) as pacs:
        good = PacsClient(pacs.dicomweb_url, PacsAuth("reader", "s3cret"))
        uid = upload(good, phantom_ct_study(4, 64, seed=17))
        assert round_trip(good, predictor, uid, top_k=1)["stored"] is not None
        for auth in (None, PacsAuth("reader", "wrong")):
            with pytest.raises(PacsAuthError, match="refused the credentials"):
                PacsClient(pacs.dicomweb_url, auth).studies()


def _outputs(client: PacsClient, uid: str) -> list[str]:
    return sorted(s.modality for s in client.series(uid) if s.description.startswith("lungct"))


def test_watch_processes_each_study_once_across_restarts(fresh_orthanc, predictor, tmp_path):
    client = PacsClient(fresh_orthanc.dicomweb_url)
    uids = [upload(client, phantom_ct_study(4, 64, seed=s)) for s in (21, 22)]
    upload(client, phantom_ct_study(3, 64, modality="MR", seed=23))  # never listed as a CT study
    state = tmp_path / "state.json"

    first = Watcher(client, predictor, state)  # settle: the first poll only records instance counts
    assert first.poll_once() == []
    assert sorted(first.poll_once()) == sorted(uids)
    assert first.poll_once() == []

    restarted = Watcher(client, predictor, state, settle=False)
    assert restarted.poll_once() == []
    assert set(json.loads(state.read_text())["done"]) == set(uids)

    state.unlink()  # even without its state, lungct never analyses a study holding its own outputs
    assert Watcher(client, predictor, state, settle=False).poll_once() == []
    for uid in uids:
        assert _outputs(client, uid) == ["OT", "SR"]
    assert n_studies(client) == 3


def test_watch_repairs_a_result_interrupted_by_a_kill(fresh_orthanc, predictor, tmp_path):
    client = PacsClient(fresh_orthanc.dicomweb_url)
    uid = upload(client, phantom_ct_study(5, 64, seed=24))
    # a watcher killed between the two STOWs: pending recorded, the SR stored, the captures not
    out = analyse(predictor, load_ct_study(client, uid), top_k=2)
    st = WatchState(tmp_path / "state.json")
    st.pending[uid] = {
        "sr_series_uid": out.sr_series_uid,
        "sc_series_uid": out.sc_series_uid,
        "n_captures": len(out.captures),
    }
    st.save()
    client.store([out.sr], uid)
    assert _outputs(client, uid) == ["SR"]

    assert Watcher(client, predictor, tmp_path / "state.json", settle=False).poll_once() == [uid]
    series = [s for s in client.series(uid) if s.description.startswith("lungct")]
    assert sorted(s.modality for s in series) == ["OT", "SR"]
    assert out.sr_series_uid not in {s.uid for s in series}  # the orphan was removed, not kept twice
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["pending"] == {} and uid in doc["done"]


def test_watch_records_refused_studies_once(fresh_orthanc, predictor, tmp_path):
    client = PacsClient(fresh_orthanc.dicomweb_url)
    bad = phantom_ct_study(6, 64, seed=25)
    uid = upload(client, bad[:2] + bad[3:])
    w = Watcher(client, predictor, tmp_path / "s.json", settle=False)
    assert w.poll_once() == [] and "missing slice" in w.state.failed[uid]["reason"]
    assert "PHANTOM" not in (tmp_path / "s.json").read_text()
    client.store([bad[2]], uid)  # the missing slice arrives: the study is tried again
    assert w.poll_once() == [uid]


def test_cli_round_trip_and_watch_once(fresh_orthanc, tiny_run, tmp_path, capsys):
    client = PacsClient(fresh_orthanc.dicomweb_url)
    uid = upload(client, phantom_ct_study(4, 64, seed=26))
    url = fresh_orthanc.dicomweb_url
    assert (
        main(["pacs", "--run", str(tiny_run), "--url", url, "--study", uid, "--dry-run", str(tmp_path)]) == 0
    )
    assert "dry run" in capsys.readouterr().out
    assert main(["pacs", "--run", str(tiny_run), "--url", url, "--study", uid, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stored"]["sr_series_uid"] in {s.uid for s in client.series(uid)}
    state = tmp_path / "state.json"
    assert main(["pacs", "watch", "--run", str(tiny_run), "--url", url, "--state", str(state), "--once"]) == 0
    assert uid in json.loads(state.read_text())["done"]  # it already held a lungct result
    assert main(["pacs", "--run", str(tiny_run), "--url", url, "--study", "1.2.3"]) == 2
    assert "not found" in capsys.readouterr().err


def test_rest_endpoints(fresh_orthanc, tiny_run):
    from fastapi.testclient import TestClient

    from lungct.serve.app import create_app

    client = PacsClient(fresh_orthanc.dicomweb_url)
    ct = upload(client, phantom_ct_study(4, 64, seed=27))
    mr = upload(client, phantom_ct_study(3, 64, modality="MR", seed=28))
    app = create_app(Predictor.from_run(tiny_run), token="t0k", pacs_url=fresh_orthanc.dicomweb_url)
    http = TestClient(app, base_url="http://127.0.0.1")
    auth = {"Authorization": "Bearer t0k"}
    assert http.get("/api/v1/pacs/studies").status_code == 401
    assert http.get("/api/v1/pacs/status", headers=auth).json()["reachable"] is True
    r = http.get("/api/v1/pacs/studies", headers=auth)
    assert r.status_code == 200
    studies = r.json()["studies"]
    assert [s["study_uid"] for s in studies] == [ct]
    assert set(studies[0]) == {"study_uid", "study_date", "description", "modalities", "n_instances"}
    assert "PHANTOM" not in r.text
    r = http.post(f"/api/v1/pacs/studies/{ct}", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] in CLASSES and set(body["probabilities"]) == set(CLASSES)
    assert body["stored"]["sc_series_uid"] in {s.uid for s in client.series(ct)}
    assert all("sop_instance_uid" in t for t in body["top_slices"]) and "threshold" in body
    r = http.post(f"/api/v1/pacs/studies/{mr}", headers=auth)
    assert r.status_code == 422 and "no CT series" in r.json()["detail"]
    assert http.post("/api/v1/pacs/studies/not-a-uid", headers=auth).status_code == 422

    down_app = create_app(Predictor.from_run(tiny_run), pacs_url=f"http://127.0.0.1:{free_port()}/x")
    down = TestClient(down_app, base_url="http://127.0.0.1")
    r = down.get("/api/v1/pacs/studies")
    assert r.status_code == 502 and "cannot reach the PACS" in r.json()["detail"]
    assert down.get("/api/v1/pacs/status").json()["reachable"] is False
    plain = TestClient(create_app(Predictor.from_run(tiny_run)), base_url="http://127.0.0.1")
    assert plain.get("/api/v1/pacs/status").status_code == 404  # no --pacs: no PACS routes


def test_watch_process_killed_while_storing_loses_nothing_and_stores_nothing_twice(
    fresh_orthanc, tiny_run, tmp_path
):
    """A real `lungct pacs watch` process is SIGKILLed as soon as it records a pending result (i.e. during
    its STOWs); the next start leaves exactly one complete result per study."""
    import os
    import subprocess
    import sys
    import time

    client = PacsClient(fresh_orthanc.dicomweb_url)
    uids = [upload(client, phantom_ct_study(4, 64, seed=s)) for s in (31, 32)]
    state = tmp_path / "state.json"
    args = [
        "pacs",
        "watch",
        "--run",
        str(tiny_run),
        "--url",
        fresh_orthanc.dicomweb_url,
        "--state",
        str(state),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lungct", *args, "--poll", "0.2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_pending = False
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                doc = json.loads(state.read_text())
            except (OSError, ValueError):
                doc = {}
            if doc.get("pending"):
                proc.kill()
                killed_pending = True
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait(10)
    assert killed_pending, "the watcher never recorded a pending result"
    assert main([*args, "--once"]) == 0
    doc = json.loads(state.read_text())
    assert doc["pending"] == {} and set(doc["done"]) == set(uids)
    for uid in uids:
        outputs = [s for s in client.series(uid) if s.description.startswith("lungct")]
        assert sorted((s.modality, s.n_instances) for s in outputs) == [("OT", 3), ("SR", 1)]
