"""Data audit: duplicates, scan groups, label conflicts, unreadable files, outputs; real-data checks."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungct import CLASSES
from lungct.data import audit as audit
from lungct.data.audit import choose_rule, run_audit
from lungct.data.discovery import list_dataset
from lungct.data.manifest import CSV_HEADER, ManifestRow, read_manifest, write_manifest
from lungct.data.phantoms import make_phantom, write_phantom_dataset
from lungct.data.splits import grouped_split, leakage_report
from lungct.errors import DataError

N_PATIENTS, SLICES = 3, 3
NORMAL, BENIGN, MALIGNANT = "Normal cases", "Bengin cases", "Malignant cases"


def _png(img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, object]:
    """Phantom set (3 patients x 3 slices per class) with planted duplicates, conflicts and bad files."""
    root = write_phantom_dataset(
        tmp_path_factory.mktemp("audit") / "data",
        n_patients=N_PATIENTS,
        slices_per_patient=SLICES,
        size=64,
        seed=1,
    )
    shutil.copy(root / NORMAL / "Normal case (1).png", root / NORMAL / "copy of normal 1.png")
    shutil.copy(root / BENIGN / "Bengin case (1).png", root / MALIGNANT / "benign 1 filed as malignant.png")
    img = np.asarray(Image.open(root / MALIGNANT / "Malignant case (1).png"))
    (root / MALIGNANT / "malignant 1 resaved.png").write_bytes(_png(img, compress_level=0))
    near = np.asarray(Image.open(root / NORMAL / "Normal case (4).png")).astype(int)  # patient 2, slice 1
    near = np.clip(near + np.random.default_rng(0).integers(-2, 3, near.shape), 0, 255).astype(np.uint8)
    (root / BENIGN / "normal 4 near copy.png").write_bytes(_png(near))
    jpg = io.BytesIO()
    Image.fromarray(img).save(jpg, format="JPEG")
    (root / NORMAL / "empty.jpg").write_bytes(b"")
    (root / NORMAL / "truncated.jpg").write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    (root / BENIGN / "notes.txt").write_text("not an image")
    (root / MALIGNANT / "random.jpg").write_bytes(np.random.default_rng(1).bytes(3000))
    res = run_audit(root, out_dir=root.parent / "out", progress=False)
    return root, res


def _by_path(res) -> dict[str, ManifestRow]:
    return {r.path: r for r in res.rows}


def test_unreadable_files_skipped_and_counted(planted):
    _, res = planted
    skipped = dict(res.skipped)
    assert set(skipped) == {
        f"{NORMAL}/empty.jpg",
        f"{NORMAL}/truncated.jpg",
        f"{BENIGN}/notes.txt",
        f"{MALIGNANT}/random.jpg",
    }
    assert "empty" in skipped[f"{NORMAL}/empty.jpg"]
    assert "not an image" in skipped[f"{BENIGN}/notes.txt"]
    assert res.summary["n_skipped"] == 4
    assert res.summary["n_images"] == 3 * N_PATIENTS * SLICES + 4 == len(res.rows)


def test_byte_duplicates_within_and_across_classes(planted):
    _, res = planted
    sets = res.summary["duplicates"]["byte"]["sets"]
    as_sets = {frozenset(s["paths"]): s["cross_class"] for s in sets}
    assert as_sets[frozenset({f"{NORMAL}/Normal case (1).png", f"{NORMAL}/copy of normal 1.png"})] is False
    assert as_sets[
        frozenset({f"{BENIGN}/Bengin case (1).png", f"{MALIGNANT}/benign 1 filed as malignant.png"})
    ]
    assert res.summary["duplicates"]["byte"]["n_cross_class_sets"] == 1
    rows = _by_path(res)
    assert rows[f"{NORMAL}/copy of normal 1.png"].duplicate_of == f"{NORMAL}/Normal case (1).png"
    assert rows[f"{NORMAL}/Normal case (1).png"].duplicate_of is None


def test_pixel_identical_but_byte_different(planted):
    _, res = planted
    rows = _by_path(res)
    a, b = rows[f"{MALIGNANT}/Malignant case (1).png"], rows[f"{MALIGNANT}/malignant 1 resaved.png"]
    assert a.sha256 != b.sha256 and a.pixel_sha256 == b.pixel_sha256
    pixel_sets = [frozenset(s["paths"]) for s in res.summary["duplicates"]["pixel"]["sets"]]
    assert pixel_sets == [frozenset({a.path, b.path})]
    assert b.duplicate_of == a.path and a.group_id == b.group_id


def test_series_share_a_group_and_patients_do_not(planted):
    _, res = planted
    rows = _by_path(res)
    folder = {"normal": NORMAL, "benign": BENIGN, "malignant": MALIGNANT}
    stem = {"normal": "Normal case", "benign": "Bengin case", "malignant": "Malignant case"}
    patient_groups = {}
    for c in CLASSES:
        for p in range(N_PATIENTS):
            gids = {rows[f"{folder[c]}/{stem[c]} ({p * SLICES + k + 1}).png"].group_id for k in range(SLICES)}
            assert len(gids) == 1, f"{c} patient {p} split over groups {gids}"
            patient_groups[(c, p)] = gids.pop()
    # the planted cross-class copies merge (benign 0, its malignant-filed copy) and (normal 1, near copy)
    assert len(set(patient_groups.values())) == len(patient_groups)
    assert res.summary["groups"]["n_groups"] == len(patient_groups)


def test_cross_class_near_duplicates_are_label_conflicts(planted):
    _, res = planted
    conflicts = res.summary["groups"]["label_conflicts"]
    assert len(conflicts) == 2
    members = [set(c["paths"]) for c in conflicts]
    assert any({f"{NORMAL}/Normal case (4).png", f"{BENIGN}/normal 4 near copy.png"} <= m for m in members)
    assert any(
        {f"{BENIGN}/Bengin case (1).png", f"{MALIGNANT}/benign 1 filed as malignant.png"} <= m
        for m in members
    )
    near = next(c for c in conflicts if f"{BENIGN}/normal 4 near copy.png" in c["paths"])
    assert near["classes"] == {"normal": SLICES, "benign": 1}
    assert near["max_cross_label_similarity"] > 0.95


def test_outputs_written_and_manifest_round_trips(planted):
    root, res = planted
    out = root.parent / "out"
    assert {"manifest.csv", "audit.json", "audit.md", "sizes_by_class.png", "similarity.png"} <= {
        p.name for p in out.iterdir()
    }
    header = (out / "manifest.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == CSV_HEADER
    assert read_manifest(out / "manifest.csv") == [
        ManifestRow(**{**r.__dict__, "mean": round(r.mean, 6), "std": round(r.std, 6)}) for r in res.rows
    ]
    summary = json.loads((out / "audit.json").read_text())
    assert summary["n_images"] == res.summary["n_images"]
    assert summary["groups"]["threshold"] == res.summary["groups"]["threshold"]
    md = (out / "audit.md").read_text()
    assert md.index("## Headline") < md.index("## Warnings") < md.index("## Label conflicts")
    for needle in (
        "byte-identical",
        "label conflicts",
        "metadata-only baseline",
        "random.jpg",
        "threshold",
        "file-number check",
    ):
        assert needle in md.lower()
    base = summary["metadata_baseline"]
    assert 0.0 <= base["balanced_accuracy"] <= 1.0 and set(base["recall"]) == set(CLASSES)


def test_size_only_in_one_class_is_flagged(tmp_path):
    root = write_phantom_dataset(tmp_path / "data", n_patients=2, slices_per_patient=2, size=48, seed=3)
    for k in range(3):
        img, _ = make_phantom("malignant", 48, 10 + k, width=72)
        (root / MALIGNANT / f"wide {k}.png").write_bytes(_png(img))
    res = run_audit(root, progress=False)
    table = res.summary["size_by_class"]
    assert table["72x48"] == {"normal": 0, "benign": 0, "malignant": 3}
    assert res.summary["non_square_by_class"] == {"normal": 0, "benign": 0, "malignant": 3}
    assert any("72x48 are malignant" in w for w in res.summary["warnings"])
    wide_groups = {r.group_id for r in res.rows if r.width == 72}
    assert not wide_groups & {r.group_id for r in res.rows if r.width == 48}


def _reference(cross: np.ndarray, rates: tuple[float, ...]) -> dict[str, np.ndarray]:
    """A nearest-neighbour summary whose neighbour of rank r is of another class for rates[r] of images."""
    n = cross.size
    other = np.stack([np.arange(n) < round(r * n) for r in rates], axis=1)
    return {"cross": cross, "neighbours": np.zeros((n, len(rates)), dtype=int), "neighbour_other": other}


def test_link_rule_from_other_class_reference():
    few = np.concatenate([np.full(5, 0.3), np.full(195, -np.inf)])
    rule = choose_rule(_reference(few, (0.0, 0.0, 0.0)))
    assert rule.threshold == 0.9 and rule.k == 0 and "default" in rule.method
    ref = np.linspace(0.2, 0.8, 200)
    rule = choose_rule(_reference(ref, (0.0, 0.03, 0.2)))
    assert rule.threshold == pytest.approx(np.percentile(ref, 95)) and rule.k == 2
    assert choose_rule(_reference(ref, (0.0, 0.03, 0.2)), error=0.01).k == 1
    assert choose_rule(_reference(ref, (0.1, 0.0, 0.0))).k == 0  # only leading ranks count
    assert choose_rule(_reference(np.full(50, 0.999), (0.0,))).threshold == 0.95  # clipped


def _row(k: int, label: int, folder: str = "N", name: str | None = None, gid: str = "") -> ManifestRow:
    path = f"{folder}/{name or f'case ({k}).png'}"
    return ManifestRow(path, label, CLASSES[label], f"s{k}", f"p{k}", 8, 8, "L", 10, 0.5, 0.1, gid)


def test_neighbour_chaining_joins_a_drifting_series():
    """Five slices whose consecutive similarity (0.8) stays under the threshold (0.9) are chained into
    one group by nearest-neighbour links; a close image of another class (0.85) is never linked."""
    angles = np.deg2rad([0.0, 36.87, 73.74, 110.61, 147.48, -31.79])
    vecs = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    rows = [_row(k, 0) for k in range(5)] + [_row(5, 1)]
    feats = (vecs, vecs, vecs)
    nn = audit._nearest(rows, feats)
    audit._group(rows, feats, audit.LinkRule(0.9, 0, "threshold only"), nn)
    assert len({r.group_id for r in rows}) == 6
    audit._group(rows, feats, audit.LinkRule(0.9, 1, "one neighbour"), nn)
    assert len({r.group_id for r in rows[:5]}) == 1 and rows[5].group_id != rows[0].group_id


def test_file_number_check_counts_split_pairs_and_runs():
    groups = ["gA", "gA", "gA", "gB", "gA", "gA"]
    rows = [_row(k + 1, 0, gid=g) for k, g in enumerate(groups)]
    rows += [_row(7, 1, folder="B", gid="gC"), _row(0, 0, name="notes.png", gid="gB")]
    check = audit.file_number_check(rows)
    assert check["adjacent_pairs"] == 5 and check["adjacent_pairs_split"] == 2
    assert check["groups_checked"] == 3 and check["contiguous_groups"] == 2  # gA is two runs
    assert audit.file_number_check([_row(0, 0, name="a.png")])["adjacent_split_fraction"] is None


def test_nothing_readable_raises(tmp_path):
    for c in (NORMAL, BENIGN):
        (tmp_path / c).mkdir()
        (tmp_path / c / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="could be read"):
        run_audit(tmp_path, progress=False)


def test_read_manifest_rejects_bad_files(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("path,label\nx.png,0\n")
    with pytest.raises(DataError, match="missing columns"):
        read_manifest(bad)
    row = ManifestRow("a.png", 0, "normal", "s", "p", 4, 4, "L", 10, 0.5, 0.1, "g0001", None)
    write_manifest([row], tmp_path / "ok.csv")
    text = (tmp_path / "ok.csv").read_text().replace(",0,normal,", ",zero,normal,")
    (tmp_path / "bad2.csv").write_text(text)
    with pytest.raises(DataError, match="malformed"):
        read_manifest(tmp_path / "bad2.csv")
    with pytest.raises(DataError, match="cannot read"):
        read_manifest(tmp_path / "missing.csv")


# ---- real development subset (skipped when absent): one audit run for all checks ----


@pytest.fixture(scope="module")
def shared_audit(shared_data_dir, tmp_path_factory):
    return run_audit(shared_data_dir, out_dir=tmp_path_factory.mktemp("shared_audit"), progress=False)


@pytest.mark.shared_data
def test_shared_byte_duplicates_match_direct_recount(shared_audit, shared_data_dir):
    listing = list_dataset(shared_data_dir)
    digests = Counter(hashlib.sha256(s.path.read_bytes()).hexdigest() for s in listing.samples)
    pairs = sum(n * (n - 1) // 2 for n in digests.values())
    byte = shared_audit.summary["duplicates"]["byte"]
    assert pairs >= 1
    assert byte["n_pairs"] == pairs
    assert byte["n_sets"] == sum(n > 1 for n in digests.values())
    assert shared_audit.summary["n_images"] + shared_audit.summary["n_skipped"] == len(listing.samples) + len(
        listing.skipped
    )


@pytest.mark.shared_data
def test_shared_non_square_sizes_mostly_malignant(shared_audit):
    table = shared_audit.summary["size_by_class"]
    other = {size: counts for size, counts in table.items() if size != "512x512"}
    assert other, "expected some images that are not 512x512"
    n_other = sum(sum(c.values()) for c in other.values())
    assert sum(c["malignant"] for c in other.values()) >= 0.9 * n_other
    assert shared_audit.summary["per_class"]["normal"]["non_square"] <= 0.1 * n_other


@pytest.mark.shared_data
def test_shared_groups_and_grouped_split_do_not_straddle(shared_audit):
    g = shared_audit.summary["groups"]
    assert 0.5 <= g["threshold"] <= 0.95
    for conflict in g["label_conflicts"]:
        assert len(conflict["classes"]) > 1
    rows = shared_audit.rows
    assignment = grouped_split(rows, seed=0)
    report = leakage_report(rows, assignment)
    assert report["groups_straddling_splits"] == 0
    assert report["test_images_with_group_in_train"] == 0
    assert report["exact_duplicate_sets_across_splits"] == 0
    for split in ("train", "val", "test"):
        assert {r.label for r, a in zip(rows, assignment, strict=True) if a == split} == {0, 1, 2}


@pytest.mark.shared_data
def test_shared_groups_close_to_scan_counts(shared_audit):
    """About 110 patients, ~80 % of them in the subset: groups per class near the scan counts, few
    label conflicts, and few consecutively numbered same-class files in different groups."""
    g = shared_audit.summary["groups"]
    n = g["per_class"]
    assert 5 <= n["benign"] <= 18 and 10 <= n["normal"] <= 60 and 10 <= n["malignant"] <= 60, n
    assert len(g["label_conflicts"]) <= 5
    assert g["n_singletons"] <= 10
    check = g["file_number_check"]
    assert check["adjacent_pairs"] > 500
    assert check["adjacent_split_fraction"] < 0.15, check
