"""Fetch a study's CT series from the PACS, decode every slice through the one input guard and
put the slices in anatomical order, refusing series that cannot be read as one stack.

A series is usable when it is CT, every instance decodes, SOP Instance UIDs are unique, and the
slices form one regular stack: ordered by position along the slice normal (or by InstanceNumber when
there is no geometry), no two slices at the same place (duplicates) and no gap wider than 1.5 x the
typical spacing (missing slices). Anything else is a :class:`StudyError` with one clear line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lungct.data.dicom import series_order
from lungct.data.imaging import LUNG_WINDOW, Window
from lungct.data.slices import Slice, decode_slice
from lungct.pacs.client import PacsClient, PacsError, SeriesInfo, short_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

OUTPUT_PREFIX = "lungct"
"""SeriesDescription prefix of every series lungct writes (how its own outputs are recognised)."""

MAX_SLICES = 2000
"""Largest series read (decoded slices are held in memory: about 2 x 4 bytes per pixel each)."""

PIXEL_DATA = 0x7FE00010

GAP_FACTOR = 1.5
"""A step between neighbouring slices above GAP_FACTOR x the median step means missing slices."""


class StudyError(PacsError):
    """The study is missing, has no usable CT series, or its slices do not form one stack."""


@dataclass
class CtStudy:
    """One CT series of a study, in anatomical order.

    ``datasets[k]`` and ``slices[k]`` are the same instance (headers and the guarded, windowed image);
    ``order`` is how the order was found: "position" or "instance".
    """

    study_uid: str
    series_uid: str
    datasets: list[Dataset]
    slices: list[Slice]
    order: str

    @property
    def sop_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


def is_own_output(series: SeriesInfo) -> bool:
    """True for a series lungct wrote (SR or Grad-CAM capture)."""
    return series.description.startswith(OUTPUT_PREFIX)


def choose_ct_series(study_uid: str, series: list[SeriesInfo], series_uid: str | None = None) -> SeriesInfo:
    """The CT series to analyse: ``series_uid`` when given, else the CT series with most instances."""
    ref = short_uid(study_uid)
    if not series:
        raise StudyError(f"study {ref} was not found on the PACS (no series)")
    if series_uid is not None:
        match = [s for s in series if s.uid == series_uid]
        if not match:
            raise StudyError(f"study {ref} has no series {short_uid(series_uid)}")
        if match[0].modality != "CT":
            raise StudyError(f"series {short_uid(series_uid)} of study {ref} is {match[0].modality}, not CT")
        return match[0]
    ct = [s for s in series if s.modality == "CT" and not is_own_output(s)]
    if not ct:
        found = sorted({s.modality or "?" for s in series})
        raise StudyError(
            f"study {ref} has no CT series (found: {', '.join(found)}); lungct reads chest CT only"
        )
    return max(ct, key=lambda s: (s.n_instances, s.uid))


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _header(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without its pixel data (the caller's dataset is left as it is)."""
    from pydicom.dataset import Dataset

    hdr = Dataset({elem.tag: elem for elem in ds if elem.tag != PIXEL_DATA})
    if hasattr(ds, "file_meta"):
        hdr.file_meta = ds.file_meta
    return hdr


def check_stack(slices: list[Slice], datasets: list[Dataset], ref: str) -> tuple[list[int], str]:
    """Order of the slices (indices) and its basis; StudyError on duplicate or missing slices."""
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    if len(set(uids)) != len(uids):
        raise StudyError(f"series of study {ref}: the same SOP Instance UID appears twice (duplicate slices)")
    order, basis = series_order([s.dicom for s in slices])
    if basis == "upload":
        raise StudyError(
            f"series of study {ref}: slices have neither ImagePositionPatient nor InstanceNumber; "
            "cannot order them"
        )
    key = [s.dicom.position if basis == "position" else s.dicom.instance for s in slices]  # type: ignore[union-attr]
    steps = np.abs(np.diff(np.asarray([key[i] for i in order], dtype=np.float64)))
    if len(steps) == 0:
        return order, basis
    unit = "mm" if basis == "position" else "instance numbers"
    typical = float(np.median(steps)) if basis == "position" else 1.0
    if np.any(steps <= 1e-3 * max(typical, 1e-6)) or typical <= 1e-6:
        n = int(np.sum(steps <= 1e-3 * max(typical, 1e-6))) if typical > 1e-6 else len(steps)
        raise StudyError(
            f"series of study {ref}: {n} duplicate slice(s) (two slices at the same {basis}); "
            "the series must be one stack without repeats"
        )
    if len(steps) >= 2 or basis == "instance":
        wide = steps > GAP_FACTOR * typical
        if np.any(wide):
            raise StudyError(
                f"series of study {ref}: missing slice(s): a step of {float(steps.max()):g} {unit} where "
                f"the spacing is {typical:g} ({int(wide.sum())} gap(s))"
            )
    return order, basis


def study_from_datasets(
    study_uid: str, series_uid: str, datasets: list[Dataset], window: Window = LUNG_WINDOW
) -> CtStudy:
    """Decode and guard every instance (the one input guard) and order the stack; StudyError when the
    series is empty, too large, not CT, or has duplicate or missing slices. The study keeps header
    copies of the datasets (no pixel data: the decoded slices hold the image)."""
    ref = short_uid(study_uid)
    if not datasets:
        raise StudyError(f"series {short_uid(series_uid)} of study {ref} has no instances")
    if len(datasets) > MAX_SLICES:
        raise StudyError(
            f"series of study {ref} has {len(datasets)} instances; lungct reads at most {MAX_SLICES}"
        )
    slices = [decode_slice(_part10(ds), f"slice {k + 1}", window) for k, ds in enumerate(datasets)]
    datasets = [_header(ds) for ds in datasets]  # the outputs need the headers only
    modalities = {str(s.dicom.modality) for s in slices if s.dicom is not None}
    if modalities != {"CT"}:
        raise StudyError(f"series of study {ref} holds {', '.join(sorted(modalities))} instances, not CT")
    order, basis = check_stack(slices, datasets, ref)
    return CtStudy(
        study_uid=study_uid,
        series_uid=series_uid,
        datasets=[datasets[i] for i in order],
        slices=[slices[i] for i in order],
        order=basis,
    )


def load_ct_study(
    client: PacsClient, study_uid: str, series_uid: str | None = None, window: Window = LUNG_WINDOW
) -> CtStudy:
    """QIDO the study's series, choose the CT series, WADO it, decode, guard and order its slices."""
    info = choose_ct_series(study_uid, client.series(study_uid), series_uid)
    if info.n_instances > MAX_SLICES:
        raise StudyError(
            f"series of study {short_uid(study_uid)} has {info.n_instances} instances; "
            f"lungct reads at most {MAX_SLICES}"
        )
    return study_from_datasets(study_uid, info.uid, client.retrieve_series(study_uid, info.uid), window)
