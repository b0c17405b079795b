"""The whole local cloud as one object: emulators, functions, router, resources, endpoints.json.

Start-up runs in parallel where nothing depends on order: ports are chosen first, so each
process knows every address before its peers answer. A port can be taken between choice and bind
(any outgoing connection may get it as its local port); the whole start-up then runs again on new
ports. Only two orders matter: the notification
topic must exist before fake-gcs-server publishes to it, and each resource needs its emulator.

A function may run as several instances (processes), as Cloud Run scales a service out: a
`Balancer` then stands in front of them under one URL. A supervisor thread replaces an instance
whose process dies by a new one on the same port and counts the restarts in endpoints.json.
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from localcloud import components, provision
from localcloud.balancer import Balancer
from localcloud.components import Component, ComponentError
from localcloud.config import FUNCTION_TARGETS, LocalConfig
from localcloud.router import Router

ENDPOINTS_FILE = "endpoints.json"
# How often the supervisor looks for dead function instances.
SUPERVISE_INTERVAL_SECONDS = 0.5
logger = logging.getLogger(__name__)
# Restarts go to router.log, next to the deliveries they explain.
supervisor_log = logging.getLogger("localcloud.router.supervisor")


class StackError(RuntimeError):
    """The stack could not start; everything it had started is stopped again."""

    def __init__(self, message: str, *, port_conflict: bool = False) -> None:
        super().__init__(message)
        self.port_conflict = port_conflict  # a part lost its port to another socket: retrying helps


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
    bigquery: str,
    functions: Mapping[str, str],
    logs: Path,
    processes: Mapping[str, int],
) -> dict[str, Any]:
    """The content of endpoints.json: everything a client of the stack needs to find."""
    return {
        "storage": storage,
        "pubsub": pubsub,
        "healthcare": healthcare,
        "bigquery": bigquery,
        # The table the store streams its instances to: what `export --sql` queries (None: up --no-stream).
        "streamTable": config.stream_table_path if config.stream_to_bigquery else None,
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
            f"export BIGQUERY_EMULATOR_URL={endpoints['bigquery']}",
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


def _as_list(launch: Callable[[], Component]) -> Callable[[], list[Component]]:
    return lambda: [launch()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class FunctionInstance:
    """One process of a function; `start` launches a replacement on the same port."""

    role: str
    component: Component
    start: Callable[[], Component]
    restarts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.component.name, "url": self.component.url, "pid": self.component.pid,
                "restarts": self.restarts}


class Stack:
    """A running local cloud. Use `Stack.start(...)` as a context manager, or call `stop()`."""

    def __init__(self, state_dir: Path, config: LocalConfig) -> None:
        self.state_dir = Path(state_dir)
        self.config = config
        self.components: list[Component] = []
        self.endpoints: dict[str, Any] = {}
        self.instances: dict[str, list[FunctionInstance]] = {}
        self.balancers: dict[str, Balancer] = {}  # role -> the front of its instances (2 or more)
        self._router: Router | None = None
        self._log_handler: logging.Handler | None = None
        self._lock = threading.Lock()  # components, instances, endpoints.json
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        # Instances being replaced, each by its own thread: several dead at once (a crash of every
        # instance of a role) come back together, not one start-up after another.
        self._replacements: dict[int, threading.Thread] = {}  # id(FunctionInstance) -> its thread
        self._render: Callable[[dict[str, int]], dict[str, Any]] = lambda processes: {}

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
        instances: Mapping[str, int] | None = None,
    ) -> Stack:
        """Starts everything; raises StackError (after stopping what started) if a part fails.

        `roles` limits which functions ("import", "export", "poll") run locally; by default every
        one whose target `source` defines. `external_functions` maps a role to the URL of a
        function served elsewhere (a test's receiver, a debugger); the router and the push
        subscription deliver there instead. `instances` maps a role to its number of processes
        (default 1).
        """
        wanted = set(FUNCTION_TARGETS) if roles is None else set(roles)
        unknown = set(instances or {}) - set(FUNCTION_TARGETS)
        if unknown or any(n < 1 for n in (instances or {}).values()):
            raise StackError(f"instances: roles are {', '.join(FUNCTION_TARGETS)}, counts at least 1; "
                             f"got {dict(instances or {})}")
        for attempt in range(1, components.PORT_TRIES + 1):
            stack = cls(state_dir, config or LocalConfig())
            try:
                stack._start(source, wanted, dict(external_functions or {}), dict(instances or {}))
                return stack
            except StackError as exc:
                stack.stop()
                if not exc.port_conflict or attempt == components.PORT_TRIES:
                    raise
                logger.warning("a port was taken while the local cloud started (attempt %d of %d); "
                               "starting again on new ports:\n%s", attempt, components.PORT_TRIES, exc)
            except BaseException:
                stack.stop()
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _start(
        self, source: Path, wanted: set[str], external: dict[str, str], instances: dict[str, int]
    ) -> None:
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
        ports = {name: components.free_port() for name in ("pubsub", "storage", "healthcare", "bigquery")}
        pubsub = f"{components.LOOPBACK}:{ports['pubsub']}"
        storage = f"http://{components.LOOPBACK}:{ports['storage']}"
        healthcare = f"http://{components.LOOPBACK}:{ports['healthcare']}"
        bigquery = f"http://{components.LOOPBACK}:{ports['bigquery']}"
        # role -> the port of each of its instances
        instance_ports = {role: [components.free_port() for _ in range(instances.get(role, 1))] for role in local_roles}
        functions: dict[str, str] = {}
        for role, role_ports in instance_ports.items():
            urls = [f"http://{components.LOOPBACK}:{port}" for port in role_ports]
            if len(urls) == 1:
                functions[role] = urls[0]
                continue
            balancer = Balancer(role, urls)
            balancer.start()
            self.balancers[role] = balancer
            functions[role] = balancer.url
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
            # The BigQuery emulator first: the Healthcare emulator writes stream rows to it.
            warehouse = components.start_bigquery_emulator(self.state_dir, port=ports["bigquery"])
            try:
                emulator = components.start_healthcare_emulator(
                    self.state_dir, storage, port=ports["healthcare"], pubsub_host=pubsub, bigquery_url=bigquery
                )
            except BaseException:
                warehouse.stop()
                raise
            try:
                if config.stream_to_bigquery:
                    provision.create_stream_dataset(bigquery, config)
                provision.create_dicom_store(healthcare, config)
            except BaseException:
                emulator.stop()
                warehouse.stop()
                raise
            return [warehouse, emulator]

        launchers: dict[str, tuple[str, Callable[[], Component]]] = {}  # task name -> (role, launcher)
        for role, role_ports in instance_ports.items():
            target = FUNCTION_TARGETS[role]
            env = config.function_env(
                target, storage=storage, pubsub=pubsub, healthcare=healthcare, bigquery=bigquery
            )
            for number, port in enumerate(role_ports, start=1):
                name = f"function-{target}" if len(role_ports) == 1 else f"function-{target}-{number}"
                task = f"function {target}" if len(role_ports) == 1 else f"function {target} #{number}"
                launchers[task] = (role, functools.partial(
                    components.start_function, target, self.state_dir, env, port=port, source=source, name=name
                ))

        tasks: dict[str, Callable[[], list[Component]]] = {
            "pubsub-emulator + fake-gcs": messaging_and_storage,
            "bigquery-emulator + healthcare-emulator": healthcare_api,
            **{task: _as_list(start) for task, (_, start) in launchers.items()},
        }
        launched = self._run_in_parallel(tasks)
        for task, (role, start) in launchers.items():
            (component,) = launched[task]
            self.instances.setdefault(role, []).append(FunctionInstance(role, component, start))

        self._router = Router(
            pubsub,
            config.subscription_path(config.notifications_subscription),
            import_url=functions.get("import"),
            poll_url=functions.get("poll"),
            poll_interval=config.poll_interval_seconds,
        )
        self._router.start()
        self._render = lambda processes: render_endpoints(
            config,
            storage=storage,
            pubsub=pubsub,
            healthcare=healthcare,
            bigquery=bigquery,
            functions=functions,
            logs=self.logs_dir,
            processes=processes,
        )
        self._write_endpoints(startup_seconds=round(time.monotonic() - started, 2))
        self._supervisor = threading.Thread(target=self._supervise, name="function-supervisor", daemon=True)
        self._supervisor.start()

    def _write_endpoints(self, startup_seconds: float | None = None) -> None:
        with self._lock:
            processes = {c.name: c.pid for c in self.components}
            processes["up"] = os.getpid()
            previous = self.endpoints.get("startupSeconds")
            self.endpoints = self._render(processes)
            self.endpoints["startupSeconds"] = startup_seconds if startup_seconds is not None else previous
            self.endpoints["functionInstances"] = {
                role: [i.to_json() for i in group] for role, group in self.instances.items()
            }
            tmp = self.endpoints_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.endpoints, indent=2) + "\n")
            tmp.replace(self.endpoints_file)  # readers never see a half-written file

    def _supervise(self) -> None:
        """Replace function instances whose process died, as Cloud Run replaces a crashed instance."""
        while not self._stopping.wait(SUPERVISE_INTERVAL_SECONDS):
            self._replacements = {key: t for key, t in self._replacements.items() if t.is_alive()}
            for group in list(self.instances.values()):
                for instance in group:
                    if self._stopping.is_set() or id(instance) in self._replacements:
                        continue
                    if not instance.component.running():
                        thread = threading.Thread(target=self._replace, args=(instance,),
                                                  name=f"replace-{instance.component.name}", daemon=True)
                        self._replacements[id(instance)] = thread
                        thread.start()
        for thread in self._replacements.values():
            thread.join()  # each at most one instance start (its own timeout) away

    def _replace(self, instance: FunctionInstance) -> None:
        old = instance.component
        supervisor_log.warning("%s (pid %s) exited with %s; starting a new instance on %s",
                               old.name, old.pid, old.process.returncode, old.url)
        old.stop(grace=1.0)  # what is left of its process group (gunicorn workers) frees the port
        try:
            new = instance.start()
        except ComponentError as exc:
            supervisor_log.error("%s: the new instance did not start (will try again): %s", old.name, exc)
            return
        if self._stopping.is_set():  # stop() began meanwhile and will not see this process
            new.stop()
            return
        with self._lock:
            self.components[self.components.index(old)] = new
            instance.component = new
            instance.restarts += 1
        supervisor_log.warning("%s: new instance pid %s on %s (restart %d)",
                               new.name, new.pid, new.url, instance.restarts)
        self._write_endpoints()

    def restarts(self) -> dict[str, int]:
        """Function instances replaced so far, per role."""
        with self._lock:
            return {role: sum(i.restarts for i in group) for role, group in self.instances.items()}

    def _run_in_parallel(self, tasks: Mapping[str, Callable[[], list[Component]]]) -> dict[str, list[Component]]:
        failures: list[str] = []
        port_conflict = False
        started: dict[str, list[Component]] = {}
        with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
            futures = {name: pool.submit(task) for name, task in tasks.items()}
            for name, future in futures.items():
                try:
                    started[name] = future.result()
                    self.components.extend(started[name])
                except Exception as exc:  # each failure is reported, not just the first
                    failures.append(f"{name}: {exc}")
                    port_conflict = port_conflict or isinstance(exc, components.PortInUse)
        if failures:
            raise StackError("the local cloud did not start:\n" + "\n".join(failures), port_conflict=port_conflict)
        return started

    def _attach_router_log(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.logs_dir / "router.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        router_logger = logging.getLogger("localcloud.router")
        router_logger.addHandler(handler)
        router_logger.setLevel(logging.INFO)
        self._log_handler = handler

    def dead_components(self) -> list[Component]:
        """Dead emulators (function instances are not listed: the supervisor replaces them)."""
        with self._lock:
            supervised = {id(i.component) for group in self.instances.values() for i in group}
            return [c for c in self.components if not c.running() and id(c) not in supervised]

    def stop(self) -> None:
        """Stops the supervisor and the router, then every process group (in parallel), and
        removes endpoints.json."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()  # it waits for the replacements it started
            self._supervisor = None
        if self._router is not None:
            try:
                self._router.stop()
            except Exception:  # a stuck subscriber must not keep processes alive
                logger.exception("router did not stop cleanly")
            self._router = None
        for balancer in self.balancers.values():
            balancer.stop()
        self.balancers = {}
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
