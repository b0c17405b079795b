"""What the operator CLI (`dicom-events`) reads from infra/: its outputs, and the subscription
that keeps completion events for it."""

from __future__ import annotations

from typing import Any

import pytest

from localcloud.deployment import TERRAFORM_OUTPUTS
from tests.infra.hcl import INFRA, load_dir


@pytest.fixture(scope="module")
def root() -> dict[str, Any]:
    return load_dir(INFRA)


def test_every_output_the_cli_reads_is_defined(root: dict[str, Any]) -> None:
    outputs = root["output"]
    missing = [name for name in TERRAFORM_OUTPUTS if name not in outputs]
    assert not missing, f"outputs.tf lacks what Deployment.from_terraform_outputs reads: {missing}"
    assert outputs["completion_subscription"]["value"] == "${google_pubsub_subscription.completions_cli.id}"
    # The CLI classifies uploads with the import function's own settings: exactly its environment.
    assert outputs["import_environment"]["value"] == "${local.functions.import.environment}"


def test_the_cli_subscription_keeps_completion_events_and_does_not_expire(root: dict[str, Any]) -> None:
    subscription = root["resource"]["google_pubsub_subscription"]["completions_cli"]
    assert subscription["topic"] == '${google_pubsub_topic.topics["completions"].id}'
    assert "push_config" not in subscription, "a pull subscription: the CLI reads it"
    assert subscription["message_retention_duration"] == "604800s"  # 7 days
    [expiration] = subscription["expiration_policy"]
    assert expiration["ttl"] == "", "an empty ttl never expires; the default deletes it after 31 idle days"
    assert subscription["retain_acked_messages"] is False
