"""PACS round trip: read a CT study over DICOMweb, store the result back as DICOM SR + Grad-CAM captures."""

from lungct.pacs.client import PacsAuth, PacsAuthError, PacsClient, PacsError, PacsStoreError, PacsUnreachable
from lungct.pacs.roundtrip import round_trip
from lungct.pacs.study import StudyError

__all__ = [
    "PacsAuth",
    "PacsAuthError",
    "PacsClient",
    "PacsError",
    "PacsStoreError",
    "PacsUnreachable",
    "StudyError",
    "round_trip",
]
