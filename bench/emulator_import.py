"""Import throughput of the Healthcare API emulator, next to the raw pydicom cost.

    python -m bench.emulator_import [--small 500] [--large 3] [--frames 40] [--size 512]

Generates N small (16x16) and a few large multi-frame instances with unique UIDs, uploads them to
a fake-gcs-server process, imports each set with one `:import` operation through an emulator
process, and prints instances/s next to reading the same files from disk and parsing them with
pydicom.dcmread in one thread.

Wall-clock rates move with whatever else runs on the machine; the CPU columns (milliseconds of
CPU per instance used by the emulator process and by fake-gcs-server during the import, from
/proc) move much less, so compare those between runs under different load. The load average is
printed with the results.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from localcloud import components

DATASET = "projects/bench/locations/local/datasets/bench"
STORE = f"{DATASET}/dicomStores/bench"


def make_instance(size: int, frames: int, study: str) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientID, ds.StudyDate, ds.Modality = "BENCH", "20240101", "MR"
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.random.default_rng().integers(0, 4096, size * size * frames, dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write_files(directory: Path, count: int, size: int, frames: int) -> list[Path]:
    directory.mkdir(parents=True)
    study = generate_uid()
    paths = []
    for i in range(count):
        path = directory / f"{i:05d}.dcm"
        path.write_bytes(make_instance(size, frames, study))
        paths.append(path)
    return paths


def pydicom_seconds(paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        pydicom.dcmread(io.BytesIO(path.read_bytes()))
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_import(base: str, uri: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    op = requests.post(f"{base}/v1/{STORE}:import", json={"gcsSource": {"uri": uri}}, timeout=30).json()
    while True:
        body = requests.get(f"{base}/v1/{op['name']}", timeout=30).json()
        if body.get("done"):
            return time.perf_counter() - started, body
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=500, help="small instances (16x16)")
    parser.add_argument("--large", type=int, default=3, help="large instances (--size^2 x --frames)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        work = Path(tmp)
        sets = {
            "small": write_files(work / "files" / "small", args.small, 16, 1),
            "large": write_files(work / "files" / "large", args.large, args.size, args.frames),
        }
        gcs_component = components.start_fake_gcs(work / "gcs-work")
        emulator = components.start_healthcare_emulator(work / "hc-work", storage_host=gcs_component.url)
        try:
            client = storage.Client(
                project="bench",
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": gcs_component.url},
            )
            bucket = client.create_bucket("bench-src")
            with ThreadPoolExecutor(8) as pool:
                for name, paths in sets.items():
                    list(
                        pool.map(
                            lambda p, n=name: bucket.blob(f"{n}/{p.name}").upload_from_filename(str(p)), paths
                        )
                    )
            base = emulator.url
            requests.post(f"{base}/v1/projects/bench/locations/local/datasets?datasetId=bench", timeout=10)
            requests.post(f"{base}/v1/{DATASET}/dicomStores?dicomStoreId=bench", timeout=10)

            print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(
                f"{'set':<6} {'instances':>9} {'MB':>8} {'emulator s':>10} {'inst/s':>9} {'MB/s':>7}"
                f" {'pydicom s':>9} {'inst/s':>9} {'ratio':>6} {'emu cpu ms':>10} {'gcs cpu ms':>10}"
            )
            for name, paths in sets.items():
                if not paths:
                    continue
                megabytes = sum(p.stat().st_size for p in paths) / 1e6
                cpu_before = cpu_seconds(emulator.pid), cpu_seconds(gcs_component.pid)
                seconds, op = run_import(base, f"gs://bench-src/{name}/*.dcm")
                emu_cpu = (cpu_seconds(emulator.pid) - cpu_before[0]) * 1000 / len(paths)
                gcs_cpu = (cpu_seconds(gcs_component.pid) - cpu_before[1]) * 1000 / len(paths)
                counter = op["metadata"].get("counter", {})
                if "error" in op or counter.get("success") != str(len(paths)):
                    raise SystemExit(f"import of {name} did not fully succeed: {op}")
                raw = pydicom_seconds(paths)
                count = len(paths)
                print(
                    f"{name:<6} {count:>9} {megabytes:>8.1f} {seconds:>10.2f} {count / seconds:>9.1f}"
                    f" {megabytes / seconds:>7.1f} {raw:>9.3f} {count / raw:>9.1f} {seconds / raw:>6.1f}"
                    f" {emu_cpu:>10.2f} {gcs_cpu:>10.2f}"
                )
            stats = requests.get(f"{base}/_emulator/stats", timeout=10).json()
            print(f"objects read more than once: {len(stats['objectsReadMoreThanOnce'])}")
            print("emulator s: POST :import until operations.get says done (includes Cloud Storage reads);")
            print("pydicom s: the same files from local disk + pydicom.dcmread, one thread")
            print("ratio: emulator s / pydicom s")
            print("emu/gcs cpu ms: CPU milliseconds per instance of the emulator / fake-gcs-server process")
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            emulator.stop()
            gcs_component.stop()


if __name__ == "__main__":
    main()
