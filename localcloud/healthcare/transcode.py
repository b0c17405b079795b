"""Re-encode a stored DICOM instance to a requested transfer syntax, where pydicom can.

Produced here: Implicit VR LE, Explicit VR LE, Explicit VR BE, Deflated Explicit VR LE and RLE
Lossless, from any stored syntax pydicom can decode (native, RLE, deflated, and the JPEG family
that pillow decodes). Other targets (JPEG, JPEG-LS, JPEG 2000 ... encoders) raise TranscodeError.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

PRODUCIBLE = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
)


class TranscodeError(ValueError):
    """The target cannot be produced from this instance; the message is safe to log."""


def transcode(data: bytes, target: str | None) -> bytes:
    """`target` None or "*" keeps the stored bytes."""
    if target in (None, "*"):
        return data
    ds: Dataset = pydicom.dcmread(io.BytesIO(data))
    if str(ds.file_meta.TransferSyntaxUID) == target:
        return data
    if UID(target) not in PRODUCIBLE:
        raise TranscodeError(f"transcoding to transfer syntax {target} is not supported by the emulator")
    try:
        ds = decoded_little_endian(ds)
        if target == ExplicitVRBigEndian:
            return _write_big_endian(ds)
        if target == RLELossless and "PixelData" in ds:
            ds.compress(RLELossless, generate_instance_uid=False)
        else:  # also RLE for an instance without pixel data: nothing to encapsulate
            ds.file_meta.TransferSyntaxUID = UID(target)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    except TranscodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoder/encoder failures are per-instance export failures
        raise TranscodeError(f"cannot transcode to {target} ({type(exc).__name__})") from None


def decoded_little_endian(ds: Dataset) -> Dataset:
    """The dataset with native (uncompressed) little-endian pixel data, Explicit VR LE."""
    stored = ds.file_meta.TransferSyntaxUID
    if stored.is_compressed:
        try:
            # Transcoding keeps the instance's identity (pydicom would mint a new SOP Instance UID).
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # noqa: BLE001
            raise TranscodeError(
                f"cannot decode stored transfer syntax {stored} ({type(exc).__name__})"
            ) from None
    elif not stored.is_little_endian:
        if "PixelData" in ds:
            ds.PixelData = _swap_pixel_bytes(ds)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = io.BytesIO()
        # pydicom refuses to switch endianness in save_as(); force_encoding re-encodes every element.
        pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True, force_encoding=True)
        ds = pydicom.dcmread(io.BytesIO(out.getvalue()))
    return ds


def _write_big_endian(ds: Dataset) -> bytes:
    if "PixelData" in ds:
        ds.PixelData = _swap_pixel_bytes(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    return out.getvalue()


def _swap_pixel_bytes(ds: Dataset) -> bytes:
    """Native pixel data in the other byte order (pydicom keeps raw bytes as stored)."""
    raw = bytes(ds.PixelData)
    width = int(ds.get("BitsAllocated", 8)) // 8
    if width <= 1:
        return raw
    usable = len(raw) - len(raw) % width
    return np.frombuffer(raw[:usable], dtype=f"u{width}").byteswap().tobytes() + raw[usable:]
