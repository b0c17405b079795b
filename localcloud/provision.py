"""Creates the local cloud's resources on the emulators (idempotent: existing ones are kept).

The emulator clients are built on explicit insecure channels instead of reading
PUBSUB_EMULATOR_HOST, so a process can talk to several stacks and needs no global state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
import grpc
import requests
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from localcloud.config import LocalConfig

# The emulator answers HTTP a moment before its admin API accepts calls.
_ADMIN_RETRY = Retry(
    predicate=if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded),
    initial=0.05,
    maximum=0.5,
    timeout=15.0,
)
_HTTP_TIMEOUT = 10.0


class ProvisionError(RuntimeError):
    """An emulator refused to create a resource."""


# Callers close the clients (`with publisher(...) as client:`): open gRPC channels make the
# interpreter hang for seconds at exit.
def publisher(pubsub_host: str) -> pubsub_v1.PublisherClient:
    transport = PublisherGrpcTransport(channel=grpc.insecure_channel(pubsub_host))
    return pubsub_v1.PublisherClient(transport=transport)


def subscriber(pubsub_host: str) -> pubsub_v1.SubscriberClient:
    transport = SubscriberGrpcTransport(channel=grpc.insecure_channel(pubsub_host))
    return pubsub_v1.SubscriberClient(transport=transport)


def create_topic(pubsub_host: str, topic_path: str) -> None:
    with publisher(pubsub_host) as client:
        try:
            client.create_topic(name=topic_path, retry=_ADMIN_RETRY)
        except gexc.AlreadyExists:
            pass


@dataclass(frozen=True)
class DeliveryPolicy:
    """Redelivery backoff after a nack or failed push, and the dead-letter topic if any."""

    min_backoff_seconds: float
    max_backoff_seconds: float
    dead_letter_topic: str | None = None
    max_delivery_attempts: int = 5


def create_subscription(
    pubsub_host: str,
    subscription_path: str,
    topic_path: str,
    *,
    push_endpoint: str | None = None,
    policy: DeliveryPolicy | None = None,
    ack_deadline_seconds: int = 60,
) -> None:
    """A pull subscription, or a push one to `push_endpoint` (wrapped messages, no auth)."""
    request: dict[str, object] = {
        "name": subscription_path,
        "topic": topic_path,
        "ack_deadline_seconds": ack_deadline_seconds,
    }
    if push_endpoint is not None:
        request["push_config"] = {"push_endpoint": push_endpoint}
    if policy is not None:
        request["retry_policy"] = {
            "minimum_backoff": {"seconds": int(policy.min_backoff_seconds)},
            "maximum_backoff": {"seconds": int(policy.max_backoff_seconds)},
        }
        if policy.dead_letter_topic:
            request["dead_letter_policy"] = {
                "dead_letter_topic": policy.dead_letter_topic,
                "max_delivery_attempts": policy.max_delivery_attempts,
            }
    with subscriber(pubsub_host) as client:
        try:
            client.create_subscription(request=request, retry=_ADMIN_RETRY)
        except gexc.AlreadyExists:
            pass


def create_bucket(storage_url: str, project: str, bucket: str) -> None:
    response = requests.post(
        f"{storage_url}/storage/v1/b",
        params={"project": project},
        json={"name": bucket},
        timeout=_HTTP_TIMEOUT,
    )
    if response.status_code not in (200, 409):
        raise ProvisionError(f"bucket {bucket}: HTTP {response.status_code} {response.text[:300]}")


def create_stream_dataset(bigquery_url: str, config: LocalConfig) -> None:
    """The BigQuery dataset the store streams to (the Healthcare API creates the table itself)."""
    url = f"{bigquery_url}/bigquery/v2/projects/{config.project}/datasets"
    reference = {"projectId": config.project, "datasetId": config.stream_dataset}
    _ok_or_exists(requests.post(url, json={"datasetReference": reference}, timeout=_HTTP_TIMEOUT))


def stream_configs(config: LocalConfig) -> list[dict[str, Any]]:
    """The store's `streamConfigs`: every instance that lands becomes a row of the stream table
    (none when `config.stream_to_bigquery` is off)."""
    if not config.stream_to_bigquery:
        return []
    return [{"bigqueryDestination": {"tableUri": f"bq://{config.stream_table_path}"}}]


def create_dicom_store(healthcare_url: str, config: LocalConfig) -> None:
    """The dataset and the store, streaming to the stream table (create its dataset first).

    A store kept from an earlier run gets the `streamConfigs` this config asks for: its state
    directory may predate the stream (and `export --sql` would find no rows), or it was started
    with the other `--no-stream` setting.
    """
    parent = f"{healthcare_url}/v1/projects/{config.project}/locations/{config.location}"
    dataset_url = f"{parent}/datasets"
    _ok_or_exists(requests.post(dataset_url, params={"datasetId": config.dataset}, json={}, timeout=_HTTP_TIMEOUT))
    stores_url = f"{parent}/datasets/{config.dataset}/dicomStores"
    body = {"streamConfigs": stream_configs(config)}
    response = requests.post(stores_url, params={"dicomStoreId": config.dicom_store}, json=body, timeout=_HTTP_TIMEOUT)
    if _ok_or_exists(response):
        return
    store_url = f"{stores_url}/{config.dicom_store}"
    existing = requests.get(store_url, timeout=_HTTP_TIMEOUT)
    _ok_or_exists(existing)
    if (existing.json().get("streamConfigs") or []) != body["streamConfigs"]:
        patch = requests.patch(store_url, params={"updateMask": "streamConfigs"}, json=body, timeout=_HTTP_TIMEOUT)
        _ok_or_exists(patch)


def _ok_or_exists(response: requests.Response) -> bool:
    """True for a 200, False for a 409 (it exists already); raises ProvisionError otherwise."""
    if response.status_code == 409:
        return False
    if response.status_code != 200:
        request = response.request
        raise ProvisionError(f"{request.method} {request.url}: HTTP {response.status_code} {response.text[:300]}")
    return True


def provision_pubsub(pubsub_host: str, config: LocalConfig, export_endpoint: str | None) -> None:
    """Topics and subscriptions; the export push subscription only when an export endpoint exists.

    Both triggers redeliver with backoff like Eventarc does; export requests that keep failing
    end up on the dead-letter topic. The storage trigger's backoff is the router's own
    (`localcloud.router.retry_delays`), not a retry policy on its subscription: the Pub/Sub
    emulator (0.8.20) keeps a subscription's backed-off messages in a list it inserts into one by
    one under the subscription's lock, and with thousands of them (a stream it lost, every
    instance down during a migration) it spent minutes of CPU there while no pull got an answer.
    """
    for name in (
        config.notifications_topic,
        config.export_requests_topic,
        config.completions_topic,
        config.export_dead_letter_topic,
    ):
        create_topic(pubsub_host, config.topic_path(name))
    sub, topic = config.subscription_path, config.topic_path
    create_subscription(pubsub_host, sub(config.notifications_subscription), topic(config.notifications_topic))
    create_subscription(pubsub_host, sub(config.completions_subscription), topic(config.completions_topic))
    create_subscription(
        pubsub_host, sub(config.export_dead_letter_subscription), topic(config.export_dead_letter_topic)
    )
    if export_endpoint is not None:
        create_subscription(
            pubsub_host,
            sub(config.export_push_subscription),
            topic(config.export_requests_topic),
            push_endpoint=export_push_endpoint(export_endpoint, config),
            policy=DeliveryPolicy(
                config.push_min_backoff_seconds,
                config.push_max_backoff_seconds,
                dead_letter_topic=topic(config.export_dead_letter_topic),
                max_delivery_attempts=config.max_delivery_attempts,
            ),
        )


def export_push_endpoint(function_url: str, config: LocalConfig) -> str:
    """functions-framework takes the CloudEvent source (the topic) from the push URL's path."""
    return f"{function_url.rstrip('/')}/{config.topic_path(config.export_requests_topic)}"
