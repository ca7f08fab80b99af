"""Every call into Ray lives in this module.

Shards run as named, detached Ray actors (`tracking-shard-NNN` in the configured namespace),
found by any API process that joins the same cluster and restarted by Ray when they die (the
restarted shard reloads its sessions from the store). Ray places, supervises and finds them;
their traffic goes over their own sockets (`engine.runtime.channel`), a Ray call costing the
caller about a millisecond of CPU. Without `TRACKING_RAY_ADDRESS` the service starts a private,
lean Ray instance (`address="local"`, no dashboard), whatever `ray start` left on the machine.

Every Ray call that can wait has a bound: on the way in (a cluster address that does not
answer) and on the way out (a service told to stop after its raylet died of the same signal).

Placement follows the store. With the shared store (`TRACKING_STORE_URL`, PostgreSQL) shards
are spread over the nodes alive when they are created, and one whose node died is restarted by
Ray on a surviving node, where it reloads from the database (the store's claim keeps a shard
to one writer). With the embedded SQLite store, the shards and the dispatcher are pinned to the
node of the process that created them, which holds their files: they never start where the
files are not (and a cluster of several nodes needs the shared store).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engine.dispatcher import dispatcher_settings
from engine.domain.errors import Unavailable
from engine.host import HostSpec
from engine.runtime import ClusterUnreachable
from engine.runtime.channel import Endpoint, SocketTransport
from engine.settings import Settings
from engine.store import StoreSpec
from engine.store.base import StoreError

log = logging.getLogger(__name__)

SHARD_NAME = "tracking-shard-{:03d}"
DISPATCHER_NAME = "tracking-outbox"
# Ray 2.60 turns token auth on by default; the head and every driver must agree. An embedded
# instance on loopback needs none, so default it off unless the operator set it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray starts workers at niceness 15; shards are the service's hot path, not background work,
# and at 15 they starve behind the API processes whenever the cores are busy. (Read by the
# raylet this process starts; a cluster joined by address keeps its own setting.)
os.environ.setdefault("RAY_worker_niceness", "0")

SCHEDULING_MEMORY = 1 << 20  # bytes: see `_placement`
READY_TIMEOUT_S = 120.0  # a shard's first start (store load) may take this long
TEARDOWN_TIMEOUT_S = 5.0
SHUTDOWN_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 5.0
# Kept out of the environment the private instance's daemons and workers inherit.
_SECRET_VARIABLES = ("TRACKING_JWT_SECRET", "TRACKING_SERVICE_SECRET")


class _ShardActor:
    """Ray actor body: a ShardHost built inside the actor process, served on its own socket
    (`engine.runtime.channel`); Ray calls only find it (`endpoint`) and check it (`ping`).

    A store that cannot be opened leaves the actor up, answering its reason to `ping`, so the
    caller can report it.
    """

    def __init__(self, spec: HostSpec) -> None:
        from engine.host import make_host, tune_gc
        from engine.runtime.channel import ChannelServer

        logging.basicConfig(level=logging.INFO)
        self.broken: str | None = None
        try:
            self.host = make_host(spec)
        except StoreError as e:
            self.broken = e.detail
            return
        address = _node_address()
        self.channel = ChannelServer(self.host, address, _socket_dir())
        self._endpoint = self.channel.endpoint(address)
        tune_gc()

    def endpoint(self) -> Endpoint | None:
        return None if self.broken is not None else self._endpoint

    def ping(self) -> int | str:
        """Sessions held, or why the shard cannot serve."""
        return self.broken if self.broken is not None else self.host.ping()

    def pid(self) -> int:
        return os.getpid()

    def where(self) -> tuple[str, int]:
        """(address of this actor's node, its pid)."""
        return _here()


def _here() -> tuple[str, int]:
    return _node_address(), os.getpid()


# A few threads, so that finding the shard (`endpoint`) never waits behind a `ping` that waits for
# the shard's lock.
ShardActor = ray.remote(max_concurrency=4)(_ShardActor)  # type: ignore[call-overload]


class _DispatcherActor:
    """Ray actor body: the outbox dispatcher, one per namespace, delivering every shard's outbox."""

    def __init__(self, settings_json: str) -> None:
        from engine.dispatcher import Dispatcher

        logging.basicConfig(level=logging.INFO)
        self.dispatcher = Dispatcher(Settings.model_validate_json(settings_json))
        self.task: asyncio.Task[None] | None = None
        # An async actor's __init__ runs on its event loop (Ray 2.60), so delivery resumes by
        # itself when Ray restarts this actor; `start()` covers runtimes where it does not.
        with contextlib.suppress(RuntimeError):
            self._launch()

    def _launch(self) -> None:
        if self.task is not None and self.task.done():
            if not self.task.cancelled() and self.task.exception() is not None:
                log.error("outbox dispatcher stopped: %r; restarting it", self.task.exception())
            self.task = None
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.dispatcher.run())

    async def start(self) -> bool:
        self._launch()
        return True

    async def counts(self) -> dict[str, int]:
        return await self.dispatcher.counts()

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return await self.dispatcher.dead_letters(limit)

    def pid(self) -> int:
        return os.getpid()

    def where(self) -> tuple[str, int]:
        return _here()


DispatcherActor = ray.remote(_DispatcherActor)


def _node_address() -> str:
    address: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return address


def _socket_dir() -> str:
    """Where same-node shards put their Unix sockets: under this Ray session's directory."""
    context = ray.get_runtime_context()
    return os.path.join(context.get_temp_dir(), context.get_session_name(), "tracking-shards")


# -- the instance ---------------------------------------------------------------------------------


def join(settings: Settings) -> None:
    """Join the configured cluster, or start a private lean local instance (idempotent)."""
    if ray.is_initialized():
        return
    common: dict[str, Any] = {
        "namespace": settings.ray_namespace,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if settings.ray_address:
        if settings.ray_node_ip:
            common["_node_ip_address"] = settings.ray_node_ip
        # ray.init retries a cluster that does not answer for minutes (seen: over 5); ask first.
        _probe(settings.ray_address)
        try:
            ray.init(address=settings.ray_address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterUnreachable(
                f"the Ray cluster at {settings.ray_address} (TRACKING_RAY_ADDRESS) did not answer:"
                f" {e}"
            ) from e
    else:
        # The daemons (and so every worker and shard actor) inherit this environment: keep the
        # secrets out of it. (Settings were read already; API worker processes get them anew.)
        hidden = {k: os.environ.pop(k) for k in _SECRET_VARIABLES if k in os.environ}
        try:
            ray.init(
                address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **common
            )
        finally:
            os.environ.update(hidden)


def _probe(address: str) -> None:
    """ClusterUnreachable, naming the address and the variable, unless the cluster's address
    accepts a connection within PROBE_TIMEOUT_S."""

    def unreachable(why: object) -> ClusterUnreachable:
        return ClusterUnreachable(
            f"the Ray cluster at {address} (TRACKING_RAY_ADDRESS) did not answer: {why}"
        )

    target: str | None = address
    if address == "auto":
        try:
            target = ray._private.services.canonicalize_bootstrap_address("auto")
        except Exception as e:
            raise unreachable(e) from e
        if target is None:
            raise unreachable("no running cluster was found on this machine")
    assert target is not None
    host, _, port = target.split("://", 1)[-1].split("/", 1)[0].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), PROBE_TIMEOUT_S).close()
    except (OSError, ValueError) as e:
        raise unreachable(e) from e


def start_local_for_tests() -> str:
    """A private local Ray instance for a test session; returns the address servers join."""
    ray.init(
        address="local",
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return address()


class _Echo:
    def echo(self, x: int) -> int:
        return x


def call_cost(calls: int) -> tuple[float, float]:
    """What one Ray actor call costs the calling process: (CPU seconds, wall seconds) per call
    of `calls` sequential calls to a trivial actor started for it (in the Ray instance this
    process joined; killed after). For `loadtests.wire_bench --ray`."""
    actor: Any = ray.remote(num_cpus=0)(_Echo).remote()
    try:
        ray.get(actor.echo.remote(0))  # started, and the call path warm
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(calls):
            ray.get(actor.echo.remote(i))
        return (time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls
    finally:
        ray.kill(actor)


def address() -> str:
    """The GCS address of the Ray instance this process joined."""
    gcs: str = ray.get_runtime_context().gcs_address
    return gcs


def shutdown() -> None:
    """Leave (or stop, when this process started it) the Ray instance, within a bound; then
    make sure no daemon this process started outlives it."""
    if not ray.is_initialized():
        return
    daemons = _daemons_started_here()
    if _instance_gone(daemons):
        # Its GCS or raylet died (a stop signal sent to the whole process group reaches them
        # too): nothing is left to stop gracefully. Kill the rest, then disconnect.
        log.info("the local Ray instance is gone already; killing what is left of it")
        _kill_daemons(daemons)
    # When the daemons are dying of the same signal, this waits on them (the driver's
    # disconnect): bounded, and whatever is still running afterwards is killed. (A quiet
    # instance stops in about 1.5 s here.)
    if not _bounded(ray.shutdown, SHUTDOWN_TIMEOUT_S, "ray.shutdown"):
        # Ray calls shutdown again at interpreter exit, with no bound: not after this one hung.
        atexit.unregister(ray.shutdown)
    _kill_daemons(daemons)


def owns_instance() -> bool:
    """Whether this process started the Ray instance it is in (the private default): stopping
    the instance then ends every actor in it, with no call to each."""
    return bool(_daemons_started_here())


def _daemons_started_here() -> list[tuple[str, Any]]:
    """(kind, Popen) of the Ray daemons this process started: its private local instance's GCS,
    raylet and helpers; none when it joined a cluster."""
    try:
        node = ray._private.worker._global_node
        if node is None or not node.head:
            return []
        return [(kind, info.process) for kind, infos in node.all_processes.items()
                for info in infos]  # fmt: skip
    except Exception:  # Ray's internals moved: fall back on its own shutdown alone
        return []


def _instance_gone(daemons: list[tuple[str, Any]]) -> bool:
    return any(kind in ("gcs_server", "raylet") and proc.poll() is not None
               for kind, proc in daemons)  # fmt: skip


def _kill_daemons(daemons: list[tuple[str, Any]]) -> None:
    alive = [proc for _, proc in daemons if proc.poll() is None]
    for proc in alive:
        with contextlib.suppress(OSError):
            proc.kill()
    for proc in alive:
        with contextlib.suppress(Exception):
            proc.wait(timeout=TEARDOWN_TIMEOUT_S)


def _bounded(fn: Callable[[], object], timeout_s: float, what: str) -> bool:
    """Run `fn` on a daemon thread; give up on it after `timeout_s` (it may hang forever when
    the raylet or GCS died first). True when it finished."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        except Exception as e:
            log.warning("%s failed: %s", what, e)
        finally:
            done.set()

    threading.Thread(target=run, name=f"bounded-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        log.warning("%s did not finish within %.0f s; going on without it", what, timeout_s)
        return False
    return True


# -- the actors -----------------------------------------------------------------------------------


def _placement(settings: Settings, slot: int) -> dict[str, Any]:
    """Where an engine actor may run. With the shared store: actor `slot` on the `slot`-th
    live node, round robin, softly, so a restart after that node died goes to any other. With
    SQLite: only this process's node, which holds the files."""
    if StoreSpec.from_settings(settings).shared:
        alive = [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]
        nodes = sorted((n["NodeManagerAddress"], n["NodeID"]) for n in alive)
        if not nodes:
            return {}
        node = nodes[slot % len(nodes)][1]
        return {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=True),
            # Ray places an actor that asks for no resource at all on a random node, whatever
            # its strategy says (seen here: 4 shards of 4 on one of two nodes, with SPREAD and
            # with soft affinity alike); a token of memory makes it follow the strategy.
            "memory": SCHEDULING_MEMORY,
        }
    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


def _shard_options(settings: Settings, index: int) -> dict[str, Any]:
    return {
        "name": SHARD_NAME.format(index),
        "namespace": settings.ray_namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "num_cpus": 0,
        **_placement(settings, index),
    }


def ensure_shards(settings: Settings) -> list[Any]:
    """Create the shard actors, or find them if another process already did; wait until they
    answer. StoreError when a shard cannot open its store (the actors are then removed)."""
    actor: Any = ShardActor
    handles = [
        actor.options(**_shard_options(settings, i)).remote(HostSpec.from_settings(settings, i))
        for i in range(settings.shards)
    ]
    answers = ray.get([h.ping.remote() for h in handles], timeout=READY_TIMEOUT_S)
    broken = [a for a in answers if isinstance(a, str)]
    if broken:
        kill_all(settings)
        raise StoreError(broken[0])
    return handles


def ensure_dispatcher(settings: Settings) -> Any:
    """Create the namespace's outbox dispatcher actor, or find it; make sure it is delivering."""
    actor: Any = DispatcherActor
    handle = actor.options(
        name=DISPATCHER_NAME,
        namespace=settings.ray_namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        num_cpus=0,
        **_placement(settings, settings.shards),
    ).remote(dispatcher_settings(settings))
    ray.get(handle.start.remote(), timeout=READY_TIMEOUT_S)
    return handle


def _find(name: str, namespace: str) -> Any | None:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def shards_exist(settings: Settings) -> bool:
    return _find(SHARD_NAME.format(0), settings.ray_namespace) is not None


def process_ids(settings: Settings) -> dict[str, int]:
    """The pid of each shard actor (`shard-NNN`) and of the dispatcher (`outbox`), when up."""
    out: dict[str, int] = {}
    names = [(f"shard-{i:03d}", SHARD_NAME.format(i)) for i in range(settings.shards)]
    for key, name in [*names, ("outbox", DISPATCHER_NAME)]:
        handle = _find(name, settings.ray_namespace)
        if handle is not None:
            try:
                out[key] = ray.get(handle.pid.remote(), timeout=READY_TIMEOUT_S)
            except (RayError, GetTimeoutError):
                continue
    return out


def placements(settings: Settings, timeout_s: float = 10.0) -> dict[str, tuple[str, int]]:
    """Where each shard actor (`shard-NNN`) and the dispatcher (`outbox`) runs now, as (node
    address, pid); one that does not answer within `timeout_s` (restarting) is left out."""
    names = [(f"shard-{i:03d}", SHARD_NAME.format(i)) for i in range(settings.shards)]
    asked = []
    for key, name in [*names, ("outbox", DISPATCHER_NAME)]:
        handle = _find(name, settings.ray_namespace)
        if handle is not None:
            asked.append((key, handle.where.remote()))
    out: dict[str, tuple[str, int]] = {}
    for key, ref in asked:
        try:
            node, pid = ray.get(ref, timeout=timeout_s)
        except (RayError, GetTimeoutError):
            continue
        out[key] = (node, pid)
    return out


def kill_all(settings: Settings) -> None:
    """Kill the shard actors and the outbox dispatcher of this namespace (shutdown), within a
    bound: when the cluster is already gone there is nothing left to kill."""

    def kill() -> None:
        names = [SHARD_NAME.format(i) for i in range(settings.shards)] + [DISPATCHER_NAME]
        for name in names:
            handle = _find(name, settings.ray_namespace)
            if handle is not None:
                with contextlib.suppress(RayError):
                    ray.kill(handle, no_restart=True)

    if not ray.is_initialized():
        return
    if _instance_gone(_daemons_started_here()):
        # The private instance died (its workers, and so the actors, die with its raylet).
        log.info("the local Ray instance is gone; its actors went with it")
        return
    _bounded(kill, TEARDOWN_TIMEOUT_S, "killing the engine's actors")


# -- the API process's side -----------------------------------------------------------------------


def transport(settings: Settings, handles: Sequence[Any]) -> SocketTransport:
    """The data plane to the shards: their own sockets, found through their actors."""

    async def resolve(shard: int) -> Endpoint:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                found: Endpoint | None = await handles[shard].endpoint.remote()
        except (RayError, TimeoutError) as e:
            raise Unavailable(f"shard {shard} is restarting; retry shortly ({e!r})") from e
        if found is None:
            raise Unavailable(f"shard {shard} cannot open its store")
        return found

    return SocketTransport(settings.shards, resolve, _node_address())


class RayOutbox:
    """The API's view of the dispatcher actor (counts and dead letters)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def counts(self) -> dict[str, int]:
        try:
            out: dict[str, int] = await self.handle.counts.remote()
        except RayError as e:
            raise Unavailable("the outbox dispatcher is restarting; retry shortly") from e
        return out

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        try:
            out: list[dict[str, Any]] = await self.handle.dead_letters.remote(limit)
        except RayError as e:
            raise Unavailable("the outbox dispatcher is restarting; retry shortly") from e
        return out

    async def close(self) -> None:
        return None  # the actor outlives this API process; `kill_all` ends it
