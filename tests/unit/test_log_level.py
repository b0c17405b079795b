"""LOG_LEVEL: what the settings accept, the cold start of main.py accepts too (one rule)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from functions import log
from functions.core.errors import ConfigurationError
from functions.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "DICOM_STORE": "projects/p/locations/us-central1/datasets/d/dicomStores/s",
    "DICOM_STATE_BUCKET": "state-bucket",
    "DICOM_COMPLETION_TOPIC": "projects/p/topics/dicom-completions",
}
# Prints the root logger's level after importing main.py the way functions-framework does.
_PROBE = "import logging, main; print(logging.getLevelName(logging.getLogger().level))"


def _cold_start(level: str, target: str = "import_dicom_on_upload") -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "LOG_LEVEL"}
    env.update(BASE, LOG_LEVEL=level, FUNCTION_TARGET=target)
    return subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize(("raw", "expected"), [("info", "INFO"), (" Debug ", "DEBUG"), ("warning", "WARNING"),
                                               ("ERROR", "ERROR")])
def test_settings_and_logging_take_the_same_values(raw: str, expected: str) -> None:
    assert Settings.from_env({**BASE, "LOG_LEVEL": raw}).log_level == expected
    log.configure(raw)
    try:
        assert logging.getLevelName(logging.getLogger().level) == expected
    finally:
        log.configure("INFO")


@pytest.mark.parametrize("raw", ["LOUD", "warn", "CRITICAL", "10"])
def test_a_value_the_settings_reject_is_rejected_by_configure_too(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="LOG_LEVEL"):
        Settings.from_env({**BASE, "LOG_LEVEL": raw})
    with pytest.raises(ValueError, match="DEBUG, INFO, WARNING or ERROR"):
        log.configure(raw)
    assert log.level_or_default(raw) == "INFO"


@pytest.mark.parametrize(("raw", "expected"), [("info", "INFO"), ("debug", "DEBUG")])
def test_cold_start_with_a_lowercase_level(raw: str, expected: str) -> None:
    result = _cold_start(raw)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected


def test_cold_start_with_a_bad_level_names_the_variable() -> None:
    result = _cold_start("loud")
    assert result.returncode != 0
    assert "ConfigurationError" in result.stderr and "LOG_LEVEL" in result.stderr, result.stderr
    # Logging itself did not crash first (that would be a ValueError from logging.setLevel).
    assert "Unknown level" not in result.stderr
    for line in result.stdout.splitlines():
        json.loads(line)  # anything logged is one JSON object per line
