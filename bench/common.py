"""Helpers the benchmarks share: synthetic instances, HTTP sessions, the emulator's control API,
and counting what a DICOM store holds (QIDO-RS)."""

from __future__ import annotations

import time
from typing import Any

import requests
from pydicom.uid import generate_uid

# Statuses the emulator answers under injected faults; the benchmarks' own reads retry them.
_RETRIED = frozenset({429, 500, 502, 503, 504})
_PAGE = 5000


def dicom_instance(study: str, series: str) -> tuple[bytes, str]:
    """A tiny unique instance of `study`/`series` and its SOP Instance UID (no patient-like data)."""
    from tests import dicom_factory

    sop = generate_uid()
    return dicom_factory.instance(study, series, sop, patient_id="BENCH"), sop


def session(pool: int = 64) -> requests.Session:
    http = requests.Session()
    http.trust_env = False  # loopback only
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool)
    http.mount("http://", adapter)
    return http


def get_retrying(http: requests.Session, url: str, *, params: dict[str, str] | None = None,
                 attempts: int = 30) -> requests.Response:
    """GET that waits out injected 429/5xx answers (a benchmark's check must not consume a fault
    and then report a wrong count)."""
    for attempt in range(attempts):
        response = http.get(url, params=params, timeout=60)
        if response.status_code not in _RETRIED:
            response.raise_for_status()
            return response
        time.sleep(min(2.0, 0.1 * 2**attempt))
    response.raise_for_status()
    return response


def emulator_control(http: requests.Session, healthcare_url: str, path: str,
                     body: dict[str, Any] | None = None) -> Any:
    """A call of the Healthcare emulator's control API (`/_emulator/PATH`); POST when `body` is given."""
    url = f"{healthcare_url}/_emulator/{path}"
    response = http.post(url, json=body, timeout=30) if body is not None else http.get(url, timeout=30)
    response.raise_for_status()
    return response.json() if response.content else None


def stored_sops(http: requests.Session, healthcare_url: str, store: str) -> set[str]:
    """Every SOP Instance UID in `store` (QIDO-RS over the store, paged)."""
    sops: set[str] = set()
    offset = 0
    while True:
        response = get_retrying(http, f"{healthcare_url}/v1/{store}/dicomWeb/instances",
                                params={"limit": str(_PAGE), "offset": str(offset), "includefield": "00080018"})
        page = response.json() if response.content.strip() else []
        sops.update(item["00080018"]["Value"][0] for item in page)
        if len(page) < _PAGE:
            return sops
        offset += len(page)
