"""Annotations delivered as DICOM objects (SEG, RTSTRUCT) <-> NIfTI label maps on the source image's grid."""

from __future__ import annotations

from .rtstruct import write_rtstruct

__all__ = ["write_rtstruct"]
