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


def _pixel_frames(ds: Dataset) -> np.ndarray:
    """The decoded frames, frame axis first."""
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing decoder, corrupt pixel data
        raise TranscodeError(f"cannot decode pixel data ({type(exc).__name__})") from None
    return pixels if frame_count(ds) > 1 else pixels[np.newaxis, ...]


def render_frames(data: bytes, media_type: str) -> list[bytes]:
    """One consumer image per frame, 8 bits per sample, with the modality and VOI LUTs applied."""
    ds = load_with_pixels(data)
    out = []
    for frame in _pixel_frames(ds):
        buffer = io.BytesIO()
        Image.fromarray(_to_uint8(ds, frame)).save(buffer, _PIL_FORMATS[media_type])
        out.append(buffer.getvalue())
    return out


def render_frame(data: bytes, media_type: str, index: int, viewport: tuple[int, ...] | None) -> bytes:
    """Frame `index` (0-based) as a consumer image. `viewport` is DICOMweb's `vw,vh[,sx,sy,sw,sh]`:
    the (optional) source region scaled to fit vw x vh, keeping the aspect ratio."""
    ds = load_with_pixels(data)
    frames = _pixel_frames(ds)
    if not 0 <= index < len(frames):
        raise IndexError(index)
    image = Image.fromarray(_to_uint8(ds, frames[index]))
    if viewport is not None:
        width, height = viewport[0], viewport[1]
        if len(viewport) == 6:
            sx, sy, sw, sh = viewport[2:]
            image = image.crop((sx, sy, sx + (sw or image.width - sx), sy + (sh or image.height - sy)))
        image.thumbnail((width or image.width, height or image.height))
    buffer = io.BytesIO()
    image.save(buffer, _PIL_FORMATS[media_type])
    return buffer.getvalue()


def png_frames(data: bytes, numbers: list[int]) -> list[bytes]:
    """Frames (1-based `numbers`) as lossless PNG of the stored sample values (no LUTs)."""
    ds = load_with_pixels(data)
    frames = _pixel_frames(ds)
    out = []
    for number in numbers:
        frame = frames[number - 1]
        if frame.dtype != np.uint8:
            if frame.ndim != 2 or frame.dtype.kind not in "iu" or frame.min() < 0 or frame.max() > 0xFFFF:
                raise TranscodeError("PNG holds 8 or 16-bit unsigned samples; this frame has others")
            frame = frame.astype(np.uint16)
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, "PNG")
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
