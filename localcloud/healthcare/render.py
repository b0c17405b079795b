"""Per-frame exports: consumer images (JPEG/PNG) and raw pixel data (application/octet-stream)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian

from .transcode import TranscodeError, decoded_little_endian

_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def load_with_pixels(data: bytes) -> Dataset:
    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise TranscodeError("instance has no pixel data")
    return ds


def render_frames(data: bytes, media_type: str) -> list[bytes]:
    """One consumer image per frame, 8 bits per sample, with the modality and VOI LUTs applied."""
    ds = load_with_pixels(data)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing decoder, corrupt pixel data
        raise TranscodeError(f"cannot decode pixel data ({type(exc).__name__})") from None
    frames = pixels if frame_count(ds) > 1 else pixels[np.newaxis, ...]
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(_to_uint8(ds, frame)).save(buffer, _PIL_FORMATS[media_type])
        out.append(buffer.getvalue())
    return out


def _to_uint8(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    if ds.get("SamplesPerPixel", 1) == 1:
        frame = apply_voi_lut(apply_modality_lut(frame, ds), ds)
    frame = frame.astype(np.float64)
    low, high = float(frame.min()), float(frame.max())
    scaled = np.zeros_like(frame) if high == low else (frame - low) * (255.0 / (high - low))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 255.0 - scaled
    return scaled.round().astype(np.uint8)


def raw_frames(data: bytes, transfer_syntax: str | None) -> list[bytes]:
    """Pixel data per frame: as stored (`*` or unspecified), or decoded to Explicit VR LE."""
    ds = load_with_pixels(data)
    stored = ds.file_meta.TransferSyntaxUID
    count = frame_count(ds)
    if transfer_syntax in (None, "*") and stored.is_compressed:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    if transfer_syntax not in (None, "*", ExplicitVRLittleEndian):
        raise TranscodeError(f"raw pixel data export to {transfer_syntax} is not supported by the emulator")
    if transfer_syntax == ExplicitVRLittleEndian:
        ds = decoded_little_endian(ds)
    pixels = bytes(ds.PixelData)
    frame_size = len(pixels) // count if count else len(pixels)
    return [pixels[i * frame_size : (i + 1) * frame_size] for i in range(count)]
