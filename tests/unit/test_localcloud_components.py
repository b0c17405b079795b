"""What a user sees when the Pub/Sub emulator's prerequisites are missing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from localcloud import components


def _which_without(missing: str) -> Callable[[str], str | None]:
    def which(name: str) -> str | None:
        return None if name == missing else f"/usr/bin/{name}"

    return which


@pytest.mark.parametrize("missing", ["java", "gcloud"])
def test_a_missing_prerequisite_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setattr(components.shutil, "which", _which_without(missing))
    with pytest.raises(components.ComponentError) as excinfo:
        components.pubsub_emulator_command(8085)
    message = str(excinfo.value)
    assert f"`{missing}` not found" in message
    assert "gcloud components install pubsub-emulator beta" in message


def test_the_direct_launcher_is_preferred(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    launcher = tmp_path / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/bin/sh\n")
    monkeypatch.setattr(components.shutil, "which", _which_without("nothing"))
    monkeypatch.setattr(components, "_gcloud_sdk_root", lambda: tmp_path)
    assert components.pubsub_emulator_command(8123) == [str(launcher), "--host=127.0.0.1", "--port=8123"]


def test_without_the_launcher_gcloud_starts_the_emulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(components.shutil, "which", _which_without("nothing"))
    monkeypatch.setattr(components, "_gcloud_sdk_root", lambda: tmp_path)
    command = components.pubsub_emulator_command(8123)
    assert command[:5] == ["gcloud", "beta", "emulators", "pubsub", "start"]
    assert "--host-port=127.0.0.1:8123" in command
