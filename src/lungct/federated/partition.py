"""Hospitals from one data set: non-IID sites made of whole scan groups.

Each class's scan groups (split units: reconstructed groups merged with their exact copies) are dealt
to the sites in proportions drawn from Dirichlet(alpha) — small alpha, very different case mixes, as
real hospitals have. A scan group is never split across sites.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lungct import CLASSES
from lungct.data.manifest import ManifestRow
from lungct.data.splits import split_units
from lungct.errors import ConfigError


def partition_sites(
    rows: Sequence[ManifestRow], n_sites: int, alpha: float = 0.5, seed: int = 0, max_tries: int = 100
) -> list[int]:
    """Site index (0..n_sites-1) per row; every site gets at least one scan group. Seeded."""
    if n_sites < 1 or alpha <= 0:
        raise ConfigError(f"need n_sites >= 1 and alpha > 0; got {n_sites}, {alpha}")
    rows = list(rows)
    unit = split_units(rows)
    n_units = int(unit.max()) + 1 if rows else 0
    if n_units < n_sites:
        raise ConfigError(f"{n_units} scan groups cannot fill {n_sites} sites")
    labels = np.array([r.label for r in rows])
    major = np.array(
        [np.bincount(labels[unit == u], minlength=len(CLASSES)).argmax() for u in range(n_units)]
    )
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        site_of_unit = np.zeros(n_units, dtype=int)
        for c in range(len(CLASSES)):
            units = rng.permutation(np.flatnonzero(major == c))
            if units.size == 0:
                continue
            share = rng.dirichlet(np.full(n_sites, alpha))
            cuts = np.round(np.cumsum(share)[:-1] * units.size).astype(int)
            for site, part in enumerate(np.split(units, cuts)):
                site_of_unit[part] = site
        if len(np.unique(site_of_unit)) == n_sites:
            return site_of_unit[unit].tolist()
    raise ConfigError(
        f"could not give each of {n_sites} sites a scan group in {max_tries} draws; raise alpha"
    )


def site_summary(rows: Sequence[ManifestRow], sites: Sequence[int]) -> list[dict[str, int]]:
    """Per site: images per class and scan groups."""
    out = []
    for s in sorted(set(sites)):
        mine = [r for r, k in zip(rows, sites, strict=True) if k == s]
        out.append(
            {
                **{c: sum(r.label == i for r in mine) for i, c in enumerate(CLASSES)},
                "groups": len({r.group_id for r in mine}),
            }
        )
    return out
