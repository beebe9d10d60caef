"""Grouped splits never let a scan group or an exact duplicate straddle; random splits visibly leak."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from lungct import CLASSES
from lungct.data.audit import run_audit
from lungct.data.manifest import ManifestRow
from lungct.data.splits import (
    SPLIT_NAMES,
    grouped_kfold,
    grouped_split,
    leakage_report,
    random_split,
    read_split,
    split_units,
    write_split,
)
from lungct.errors import ConfigError, DataError


def _rows(seed: int = 0) -> list[ManifestRow]:
    """~60 synthetic groups of 1-12 images over three classes; two exact copies cross group lines."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(60):
        label = [0, 0, 1, 2, 2][g % 5]
        for k in range(int(rng.integers(1, 13))):
            name = f"g{g}_{k}"
            rows.append(
                ManifestRow(
                    f"{CLASSES[label]}/{name}.png",
                    label,
                    CLASSES[label],
                    f"sha-{name}",
                    f"pix-{name}",
                    64,
                    64,
                    "L",
                    1000,
                    0.3,
                    0.2,
                    f"g{g:04d}",
                )
            )
    rows[5].sha256 = rows[-1].sha256  # byte-identical file placed in another group
    rows[12].pixel_sha256 = rows[40].pixel_sha256  # pixel-identical file in another group
    return rows


def _units_straddle(rows, assignment) -> int:
    where = defaultdict(set)
    for r, a in zip(rows, assignment, strict=True):
        for key in (r.group_id, r.sha256, r.pixel_sha256):
            where[key].add(a)
    return sum(len(s) > 1 for s in where.values())


@pytest.fixture(scope="module")
def phantom_rows(phantom_root):
    return run_audit(phantom_root, progress=False).rows


def test_split_units_merge_groups_linked_by_copies():
    rows = _rows()
    unit = split_units(rows)
    assert unit[5] == unit[len(rows) - 1] and unit[12] == unit[40]
    merges = (rows[5].group_id != rows[-1].group_id) + (rows[12].group_id != rows[40].group_id)
    assert merges == 2 and len(set(unit.tolist())) == 60 - merges


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_never_straddles_and_is_stratified(seed):
    rows = _rows(seed)
    a = grouped_split(rows, fractions=(0.6, 0.2, 0.2), seed=seed)
    assert len(a) == len(rows) and set(a) <= set(SPLIT_NAMES)
    assert _units_straddle(rows, a) == 0
    for split in SPLIT_NAMES:
        assert {r.label for r, s in zip(rows, a, strict=True) if s == split} == {0, 1, 2}
    n_train = a.count("train")
    assert 0.45 * len(rows) < n_train < 0.75 * len(rows)
    assert grouped_split(rows, fractions=(0.6, 0.2, 0.2), seed=seed) == a
    assert grouped_split(rows, fractions=(0.6, 0.2, 0.2), seed=seed + 10) != a
    report = leakage_report(rows, a)
    assert report["groups_straddling_splits"] == 0 and not report["leaky"]


def test_grouped_split_zero_fraction_and_bad_fractions():
    rows = _rows()
    a = grouped_split(rows, fractions=(0.8, 0.2, 0.0))
    assert "test" not in a and _units_straddle(rows, a) == 0
    for bad in [(0.5, 0.5, 0.5), (0.7, 0.3), (-0.1, 0.6, 0.5), (0.0, 0.5, 0.5)]:
        with pytest.raises(ConfigError, match="fractions"):
            grouped_split(rows, fractions=bad)


def test_grouped_kfold_disjoint_covering_seeded():
    rows = _rows()
    unit = split_units(rows)
    folds = grouped_kfold(rows, k=5, seed=3)
    assert len(folds) == 5
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(len(rows)))
    for tr, te in folds:
        assert not set(unit[tr].tolist()) & set(unit[te].tolist())
        assert len(tr) + len(te) == len(rows)
    again = grouped_kfold(rows, k=5, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    with pytest.raises(ConfigError, match="k-fold"):
        grouped_kfold(rows, k=1)
    with pytest.raises(ConfigError, match="k-fold"):
        grouped_kfold(rows[:3], k=5)


def test_random_split_leaks_on_phantoms_grouped_does_not(phantom_rows):
    rnd = random_split(phantom_rows, seed=0)
    assert len(rnd) == len(phantom_rows)
    leaky = leakage_report(phantom_rows, rnd)
    assert leaky["test_images_with_group_in_train"] > 0 and leaky["leaky"]
    assert leaky["groups_straddling_splits"] > 0
    grouped = grouped_split(phantom_rows, seed=0)
    clean = leakage_report(phantom_rows, grouped)
    assert clean["test_images_with_group_in_train"] == 0 and clean["groups_straddling_splits"] == 0
    assert clean["n_test"] > 0 and clean["n_val"] > 0
    assert random_split(phantom_rows, seed=0) == rnd


def test_random_split_fractions_per_class():
    rows = _rows()
    a = np.array(random_split(rows, fractions=(0.5, 0.25, 0.25), seed=1))
    y = np.array([r.label for r in rows])
    for c in range(3):
        n = (y == c).sum()
        assert abs((a[y == c] == "train").sum() - 0.5 * n) <= 1


def test_split_csv_round_trip_and_errors(tmp_path):
    rows = _rows()
    a = grouped_split(rows)
    path = write_split(tmp_path / "split.csv", rows, a)
    assert read_split(path) == {r.path: s for r, s in zip(rows, a, strict=True)}
    assert path.read_text().splitlines()[0] == "path,label,class,group_id,split"
    (tmp_path / "bad.csv").write_text(path.read_text().replace(",train", ",training"))
    with pytest.raises(DataError, match="unknown split"):
        read_split(tmp_path / "bad.csv")
    (tmp_path / "nocol.csv").write_text("file,fold\na,1\n")
    with pytest.raises(DataError, match="not a split file"):
        read_split(tmp_path / "nocol.csv")
    with pytest.raises(DataError, match="entries"):
        write_split(tmp_path / "x.csv", rows, a[:-1])
    with pytest.raises(DataError, match="entries"):
        leakage_report(rows, a[:-1])


def test_grouped_split_few_equal_groups_fill_every_split():
    rows = []
    for label, c in enumerate(CLASSES):
        for g in range(4):
            for k in range(3):
                key = f"{label}{g}{k}"
                rows.append(
                    ManifestRow(f"{c}/{key}.png", label, c, f"s{key}", f"p{key}", 8, 8, "L", 9, 0.1, 0.1)
                )
                rows[-1].group_id = f"{c}-{g}"
    for seed in range(3):
        a = grouped_split(rows, fractions=(1 - 0.15 - 0.15, 0.15, 0.15), seed=seed)
        for split in SPLIT_NAMES:
            assert {r.label for r, s in zip(rows, a, strict=True) if s == split} == {0, 1, 2}
        assert a.count("train") == 18 and _units_straddle(rows, a) == 0
