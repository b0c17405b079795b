"""The whole local cloud as one object: emulators, functions, router, resources, endpoints.json.

Start-up runs in parallel where nothing depends on order: ports are reserved first, so each
process knows every address before its peers answer. Only two orders matter: the notification
topic must exist before fake-gcs-server publishes to it, and each resource needs its emulator.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from localcloud import components, provision
from localcloud.components import Component
from localcloud.config import FUNCTION_TARGETS, LocalConfig
from localcloud.router import Router

ENDPOINTS_FILE = "endpoints.json"
logger = logging.getLogger(__name__)


class StackError(RuntimeError):
    """The stack could not start; everything it had started is stopped again."""


def defined_targets(source: Path) -> set[str]:
    """Top-level names `source` defines or imports, read without importing it (no side effects)."""
    if not source.is_file():
        return set()
    names: set[str] = set()
    for node in ast.parse(source.read_text(), filename=str(source)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def render_endpoints(
    config: LocalConfig,
    *,
    storage: str,
    pubsub: str,
    healthcare: str,
    functions: Mapping[str, str],
    logs: Path,
    processes: Mapping[str, int],
) -> dict[str, Any]:
    """The content of endpoints.json: everything a client of the stack needs to find."""
    return {
        "storage": storage,
        "pubsub": pubsub,
        "healthcare": healthcare,
        "project": config.project,
        "location": config.location,
        "dataset": config.dataset_path,
        "dicomStore": config.dicom_store_path,
        "buckets": {
            "upload": config.upload_bucket,
            "export": config.export_bucket,
            "state": config.state_bucket,
        },
        "topics": {
            "exportRequests": config.topic_path(config.export_requests_topic),
            "completions": config.topic_path(config.completions_topic),
            "notifications": config.topic_path(config.notifications_topic),
            "exportDeadLetter": config.topic_path(config.export_dead_letter_topic),
        },
        "subscriptions": {
            "completions": config.subscription_path(config.completions_subscription),
            "exportDeadLetter": config.subscription_path(config.export_dead_letter_subscription),
        },
        "functions": dict(functions),
        "logs": str(logs),
        "processes": dict(processes),
    }


def env_exports(endpoints: Mapping[str, Any]) -> str:
    """Shell lines that point Google clients (and our functions) at a running stack."""
    return "\n".join(
        [
            f"export STORAGE_EMULATOR_HOST={endpoints['storage']}",
            f"export PUBSUB_EMULATOR_HOST={endpoints['pubsub']}",
            f"export HEALTHCARE_API_URL={endpoints['healthcare']}",
            f"export GOOGLE_CLOUD_PROJECT={endpoints['project']}",
        ]
    )


def read_endpoints(state_dir: Path) -> dict[str, Any] | None:
    """The endpoints of the stack running for `state_dir`, or None (none, or it died uncleanly)."""
    try:
        endpoints: dict[str, Any] = json.loads((Path(state_dir) / ENDPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    owner = endpoints.get("processes", {}).get("up")
    if owner is not None and not _alive(int(owner)):
        return None
    return endpoints


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Stack:
    """A running local cloud. Use `Stack.start(...)` as a context manager, or call `stop()`."""

    def __init__(self, state_dir: Path, config: LocalConfig) -> None:
        self.state_dir = Path(state_dir)
        self.config = config
        self.components: list[Component] = []
        self.endpoints: dict[str, Any] = {}
        self._router: Router | None = None
        self._log_handler: logging.Handler | None = None

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def endpoints_file(self) -> Path:
        return self.state_dir / ENDPOINTS_FILE

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        config: LocalConfig | None = None,
        source: Path = components.REPO_ROOT / "main.py",
        roles: Collection[str] | None = None,
        external_functions: Mapping[str, str] | None = None,
    ) -> Stack:
        """Starts everything; raises StackError (after stopping what started) if a part fails.

        `roles` limits which functions ("import", "export", "poll") run locally; by default every
        one whose target `source` defines. `external_functions` maps a role to the URL of a
        function served elsewhere (a test's receiver, a debugger); the router and the push
        subscription deliver there instead.
        """
        stack = cls(state_dir, config or LocalConfig())
        wanted = set(FUNCTION_TARGETS) if roles is None else set(roles)
        try:
            stack._start(source, wanted, dict(external_functions or {}))
        except BaseException:
            stack.stop()
            raise
        return stack

    def _start(self, source: Path, wanted: set[str], external: dict[str, str]) -> None:
        started = time.monotonic()
        running = read_endpoints(self.state_dir)
        if running is not None:
            raise StackError(
                f"a local cloud is already running for {self.state_dir} (pid {running['processes']['up']}); "
                "stop it, or use another --state-dir"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.endpoints_file.unlink(missing_ok=True)  # left over by a stack that died uncleanly
        self._attach_router_log()
        config = self.config
        available = defined_targets(source)
        local_roles = [
            role
            for role, target in FUNCTION_TARGETS.items()
            if role in wanted and role not in external and target in available
        ]
        ports = {name: components.free_port() for name in ("pubsub", "storage", "healthcare", *local_roles)}
        pubsub = f"{components.LOOPBACK}:{ports['pubsub']}"
        storage = f"http://{components.LOOPBACK}:{ports['storage']}"
        healthcare = f"http://{components.LOOPBACK}:{ports['healthcare']}"
        functions = {role: f"http://{components.LOOPBACK}:{ports[role]}" for role in local_roles}
        functions.update(external)

        def messaging_and_storage() -> list[Component]:
            broker = components.start_pubsub_emulator(self.state_dir, port=ports["pubsub"])
            try:
                provision.provision_pubsub(pubsub, config, functions.get("export"))
                gcs = components.start_fake_gcs(
                    self.state_dir,
                    pubsub_host=pubsub,
                    event_topic=config.topic_path(config.notifications_topic),
                    port=ports["storage"],
                    event_bucket=config.upload_bucket,
                )
            except BaseException:
                broker.stop()
                raise
            try:
                for bucket in (config.upload_bucket, config.export_bucket, config.state_bucket):
                    provision.create_bucket(storage, config.project, bucket)
            except BaseException:
                gcs.stop()
                broker.stop()
                raise
            return [broker, gcs]

        def healthcare_api() -> list[Component]:
            emulator = components.start_healthcare_emulator(
                self.state_dir, storage, port=ports["healthcare"], pubsub_host=pubsub
            )
            try:
                provision.create_dicom_store(healthcare, config)
            except BaseException:
                emulator.stop()
                raise
            return [emulator]

        def function(role: str) -> Callable[[], list[Component]]:
            target = FUNCTION_TARGETS[role]
            env = config.function_env(target, storage=storage, pubsub=pubsub, healthcare=healthcare)
            return lambda: [components.start_function(target, self.state_dir, env, port=ports[role], source=source)]

        tasks: dict[str, Callable[[], list[Component]]] = {
            "pubsub-emulator + fake-gcs": messaging_and_storage,
            "healthcare-emulator": healthcare_api,
            **{f"function {FUNCTION_TARGETS[role]}": function(role) for role in local_roles},
        }
        self._run_in_parallel(tasks)

        self._router = Router(
            pubsub,
            config.subscription_path(config.notifications_subscription),
            import_url=functions.get("import"),
            poll_url=functions.get("poll"),
            poll_interval=config.poll_interval_seconds,
        )
        self._router.start()
        processes = {c.name: c.pid for c in self.components}
        processes["up"] = os.getpid()
        self.endpoints = render_endpoints(
            config,
            storage=storage,
            pubsub=pubsub,
            healthcare=healthcare,
            functions=functions,
            logs=self.logs_dir,
            processes=processes,
        )
        self.endpoints["startupSeconds"] = round(time.monotonic() - started, 2)
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints, indent=2) + "\n")
        tmp.replace(self.endpoints_file)  # readers never see a half-written file

    def _run_in_parallel(self, tasks: Mapping[str, Callable[[], list[Component]]]) -> None:
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
            futures = {name: pool.submit(task) for name, task in tasks.items()}
            for name, future in futures.items():
                try:
                    self.components.extend(future.result())
                except Exception as exc:  # each failure is reported, not just the first
                    failures.append(f"{name}: {exc}")
        if failures:
            raise StackError("the local cloud did not start:\n" + "\n".join(failures))

    def _attach_router_log(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.logs_dir / "router.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        router_logger = logging.getLogger("localcloud.router")
        router_logger.addHandler(handler)
        router_logger.setLevel(logging.INFO)
        self._log_handler = handler

    def dead_components(self) -> list[Component]:
        return [c for c in self.components if not c.running()]

    def stop(self) -> None:
        """Stops the router, then every process group (in parallel), and removes endpoints.json."""
        if self._router is not None:
            try:
                self._router.stop()
            except Exception:  # a stuck subscriber must not keep processes alive
                logger.exception("router did not stop cleanly")
            self._router = None
        if self.components:
            with ThreadPoolExecutor(max_workers=len(self.components)) as pool:
                list(pool.map(lambda c: c.stop(), self.components))
        if self.endpoints:  # only the file this stack wrote, never a running neighbour's
            self.endpoints_file.unlink(missing_ok=True)
        if self._log_handler is not None:
            logging.getLogger("localcloud.router").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
