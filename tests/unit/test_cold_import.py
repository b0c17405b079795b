"""Importing main.py the way functions-framework does loads none of the heavy client libraries:
they are paid for by the first event that needs them (lazy clients), not by every cold start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from functions.gcp.retry import classify

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("google.api_core", "google.cloud.storage", "google.cloud.pubsub_v1", "grpc", "requests", "urllib3")
_PROBE = ("import json, sys, functions_framework; before = set(sys.modules); import main; "
          "print(json.dumps(sorted(set(sys.modules) - before)))")


@pytest.mark.parametrize("target", ["import_dicom_on_upload", "export_dicom_on_message", "poll_dicom_operations"])
def test_importing_main_loads_no_client_library(target: str) -> None:
    env = {**os.environ, "FUNCTION_TARGET": target, "DICOM_STORE": "projects/p/locations/l/datasets/d/dicomStores/s",
           "DICOM_STATE_BUCKET": "state", "DICOM_COMPLETION_TOPIC": "projects/p/topics/dicom-completions"}
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    added = json.loads(done.stdout.splitlines()[-1])
    assert "main" in added
    heavy = [name for name in added if name.split(".")[0] in {h.split(".")[0] for h in HEAVY} and
             any(name == h or name.startswith(h + ".") for h in HEAVY)]
    assert heavy == [], f"main.py loads {heavy[:10]}"


def test_a_client_librarys_fault_is_classified_once_its_module_is_loaded() -> None:
    from google.api_core import exceptions as gexc
    from requests import exceptions as rex

    assert classify(gexc.TooManyRequests("slow down")).retry
    assert not classify(gexc.Forbidden("no")).retry
    assert classify(gexc.Aborted("conflict")).retry
    assert classify(rex.ConnectionError("reset")).retry
    assert not classify(rex.InvalidURL("bad")).retry
