"""NIfTI-1/2 files (``.nii``, ``.nii.gz``) -> ``(array, meta)`` with header and voxel checks.

The array is nibabel's ``[X, Y, Z(, T...)]`` with scl_slope/scl_inter applied, as MONAI's NibabelReader
gives it; ``meta["affine"]`` is nibabel's best affine (sform when its code is set, else qform). Refused
with a :class:`medres.errors.DataError`: files whose bytes are not what their name says, truncated
files, headers with no valid affine (qform and sform codes both 0), singular affines, NaN/inf voxels,
header extensions larger than :data:`MAX_EXTENSION_BYTES` or not fitting before the voxel data.
Only geometry leaves this module: the header's free-text fields (``descrip``, ``db_name``, ``aux_file``)
may hold anything and are dropped.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medres.data.readers.limits import check_declared, memory_error
from medres.data.readers.redact import safe_message
from medres.errors import DataError

__all__ = ["MAX_EXTENSION_BYTES", "read_nifti", "sniff"]


def sniff(head: bytes) -> str:
    """What a file's first bytes look like (for 'this is not what its name says' messages)."""
    if head[:2] == b"\x1f\x8b":
        return "gzip-compressed data"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "a PNG image"
    if head[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "an uncompressed NIfTI-1 file"
    if len(head) >= 12 and head[4:8] == b"n+2\x00":
        return "an uncompressed NIfTI-2 file"
    if not head:
        return "an empty file"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        return "text"
    return "unrecognised binary data"


def _header_bytes(path: Path, compressed: bool) -> bytes:
    """The first 544 bytes of the (decompressed) file, with the true reason when they cannot be had."""
    with open(path, "rb") as fh:
        raw = fh.read(544)
    if compressed:
        if raw[:2] != b"\x1f\x8b":
            raise DataError(f"is named .gz but is not gzip-compressed: its bytes look like {sniff(raw)}",
                            path=path, hint="rename the file to match its content, or re-export it")
        try:
            with gzip.open(path, "rb") as fh:
                raw = fh.read(544)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"is a damaged gzip file ({safe_message(exc)})", path=path,
                            hint="re-export or re-copy the file") from None
    return raw


def _check_header(raw: bytes, path: Path) -> type[nib.Nifti1Image]:
    """The nibabel class for these header bytes, or the true reason they are not a NIfTI-1/2 header."""
    for order in "<>":
        if len(raw) >= 4 and struct.unpack(order + "i", raw[:4])[0] == 348:
            if len(raw) < 348:
                break
            if raw[344:348] == b"n+1\x00":
                return nib.Nifti1Image
            if raw[344:348] == b"ni1\x00":
                raise DataError("is a two-file NIfTI header (.hdr/.img pair) stored as .nii", path=path,
                                hint="convert it to a single .nii/.nii.gz file (e.g. nibabel.save)")
            if raw[344:348] == b"\x00\x00\x00\x00":
                raise DataError("has no NIfTI magic (bytes 344-347 are zero): an Analyze 7.5 file or a "
                                "damaged NIfTI header; Analyze has no reliable orientation", path=path,
                                hint="convert it to NIfTI with its true orientation, or re-copy the file")
            raise DataError(f"has a damaged NIfTI header: the magic at byte 344 is {bytes(raw[344:348])!r}, "
                            "not 'n+1'", path=path, hint="the file is corrupt: re-export or re-copy it")
        if len(raw) >= 4 and struct.unpack(order + "i", raw[:4])[0] == 540:
            if len(raw) >= 8 and raw[4:8] == b"n+2\x00":
                return nib.Nifti2Image
            break
    if len(raw) >= 348 and raw[344:348] == b"n+1\x00":
        size = struct.unpack("<i", raw[:4])[0]
        raise DataError(f"has a damaged NIfTI-1 header: sizeof_hdr is {size}, not 348", path=path,
                        hint="the file is corrupt: re-export or re-copy it")
    if len(raw) < 348:
        raise DataError(f"is too short for a NIfTI header ({len(raw)} bytes; a header has 348 or 540)",
                        path=path, hint="the file is truncated or empty: re-export or re-copy it")
    raise DataError(f"is not a NIfTI file: its bytes look like {sniff(raw)}", path=path,
                    hint="rename the file to match its content, or re-export it as NIfTI")


#: Header extensions (esize/ecode blocks between the header and the voxels) may hold this many bytes in
#: all; nibabel reads every one whole into memory before anything else can be checked.
MAX_EXTENSION_BYTES = 64 << 20


def _check_extensions(path: Path, compressed: bool, raw: bytes, nifti2: bool) -> None:
    """Refuse header extensions nibabel would read beyond a sane size, before it reads them.

    nibabel reads each extension's declared ``esize`` in one call (a 2 GiB ``esize`` allocates 2 GiB, a
    negative one reads the stream to its end) and, with ``vox_offset`` before the extensions, reads
    extensions until the end of the file. Walked here by hand (no library exposes the extension sizes
    without reading the extensions): the declared total (``vox_offset``) is bounded first, then each
    ``esize`` is checked against it, skipping over the contents without keeping them.
    """
    start = 540 if nifti2 else 348
    if len(raw) < start + 4 or raw[start] == 0:
        return  # no extensions: nibabel reads none
    order = "<" if struct.unpack("<i", raw[:4])[0] in (348, 540) else ">"
    offset = (struct.unpack(order + "q", raw[168:176])[0] if nifti2
              else struct.unpack(order + "f", raw[108:112])[0])
    start += 4
    if not np.isfinite(offset) or int(offset) < start:
        raise DataError(f"flags header extensions but its voxel data offset (vox_offset {offset:.0f}) lies "
                        f"before their start (byte {start}): a damaged header", path=path,
                        hint="re-export the file")
    end = int(offset)
    if end - start > MAX_EXTENSION_BYTES:
        raise DataError(f"declares {(end - start) / 2**20:.0f} MiB of header extensions (vox_offset {end}), "
                        f"more than the {MAX_EXTENSION_BYTES >> 20} MiB medres reads; refused before reading "
                        "them (a damaged header or a decompression bomb?)", path=path,
                        hint="re-export the file without its extensions (e.g. nibabel: img.header.extensions"
                             ".clear())")
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as fh:
        fh.seek(start)
        pos = start
        while end - pos >= 16:
            head = fh.read(8)
            if len(head) < 8:
                raise DataError(f"is truncated inside its header extensions (byte {pos})", path=path,
                                hint="re-export or re-copy the file")
            esize = struct.unpack(order + "i", head[:4])[0]
            if esize < 16 or pos + esize > end:
                raise DataError(f"has a header extension at byte {pos} declaring {esize} bytes, which does "
                                f"not fit between the header and the voxel data (vox_offset {end}); refused "
                                "before reading it", path=path,
                                hint="the header is damaged: re-export the file")
            pos += esize
            fh.seek(pos)


def _gzip_size(path: Path) -> int:
    """Uncompressed size from the gzip trailer (modulo 2**32)."""
    with open(path, "rb") as fh:
        fh.seek(-4, 2)
        return struct.unpack("<I", fh.read(4))[0]


def _gzip_holds(path: Path, need: int) -> int:
    """How many bytes (up to ``need``) the gzip stream really decompresses to, counted in 1 MiB chunks
    without keeping them: the trailer holds the size modulo 2**32 only."""
    got = 0
    with gzip.open(path, "rb") as fh:
        while got < need:
            chunk = fh.read(min(1 << 20, need - got))
            if not chunk:
                break
            got += len(chunk)
    return got


def read_nifti(path: str | Path, *, max_voxels: int | None = None) -> tuple[np.ndarray, dict]:
    """One NIfTI file -> ``([X, Y, Z(, T)], meta)``; trailing singleton dimensions beyond 3 are dropped.

    The header's declared size is checked against ``max_voxels`` (see :mod:`medres.data.readers.limits`) and,
    for gzip, against what the stream holds, before any voxel is decompressed.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError("is a folder, not a NIfTI file", path=path,
                        hint="a DICOM series folder must not be named like a NIfTI file: rename it")
    compressed = path.name.lower().endswith(".gz")
    try:
        raw = _header_bytes(path, compressed)
    except OSError as exc:
        raise DataError(f"could not be read ({safe_message(exc)})", path=path) from None
    image_class = _check_header(raw, path)
    try:
        _check_extensions(path, compressed, raw, image_class is nib.Nifti2Image)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"could not be read ({safe_message(exc)})", path=path,
                        hint="re-export or re-copy the file") from None
    try:
        img = image_class.from_filename(path, mmap=False)
        header = img.header
        shape = tuple(int(s) for s in img.shape)
        qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    except MemoryError:
        raise memory_error(path) from None
    except Exception as exc:  # nibabel raises several types on damaged headers
        raise DataError(f"has a damaged NIfTI header ({safe_message(exc)})", path=path,
                        hint="re-export the file") from None
    if 3000 <= int(header["intent_code"]) < 3100:
        raise DataError("is a CIFTI-2 file (surface/grayordinate data), not an image volume", path=path,
                        hint="medres reads image volumes; list the NIfTI volume instead")
    if qcode == 0 and scode == 0:
        raise DataError("has no valid affine: qform_code and sform_code are both 0, so the voxels' position "
                        "and orientation in the scanner are unknown", path=path,
                        hint="re-export with the scanner geometry (e.g. dcm2niix), or set the sform/qform "
                             "with nibabel if the orientation is known")
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise DataError(f"has an invalid shape {shape}", path=path, hint="re-export the file")
    dtype = header.get_data_dtype()
    check_declared(shape, dtype.itemsize, path, max_voxels=max_voxels, what="its NIfTI header")
    offset = int(getattr(img.dataobj, "offset", 0))
    need = offset + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    have = _gzip_size(path) if compressed else path.stat().st_size
    if compressed and need >= 2**32:
        try:
            have = _gzip_holds(path, need)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"is a damaged gzip file ({safe_message(exc)})", path=path,
                            hint="re-export or re-copy the file") from None
    if need > have:
        raise DataError(f"is truncated: the header promises {need} bytes of data, the file holds {have}",
                        path=path, hint="re-export or re-copy the file")
    try:
        affine = np.array(img.affine, dtype=np.float64)
        data = np.asanyarray(img.dataobj)
    except MemoryError:
        raise memory_error(path, int(np.prod(shape, dtype=np.float64)) * (dtype.itemsize + 4)) from None
    except Exception as exc:
        raise DataError(f"has damaged or truncated voxel data ({safe_message(exc)})", path=path,
                        hint="re-export or re-copy the file") from None
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError("has a singular or non-finite affine (a voxel size of 0?)", path=path,
                        hint="re-export the file with valid pixdim/sform")
    if not data.dtype.isnative:  # e.g. big-endian files: torch cannot wrap them (masks load as stored)
        data = data.astype(data.dtype.newbyteorder("="))
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all():
            n_nan = int(np.isnan(data).sum())
            n_inf = int(data.size - finite.sum()) - n_nan
            raise DataError(f"has {n_nan} NaN and {n_inf} infinite voxel(s)", path=path,
                            hint="fix the file (e.g. replace NaN by the background value) and re-export")
    spatial = data.shape[:3]
    meta = {"affine": affine, "spatial_shape": np.asarray(spatial),
            "original_channel_dim": -1 if data.ndim > 3 else float("nan"),
            "spacing": np.linalg.norm(affine[:3, : min(3, len(spatial))], axis=0)}
    return np.ascontiguousarray(data), meta
