"""The `tracking` command: `serve`, `token` and `shards`; other commands (`tracking sim`) are
found by entry point (group `tracking.commands`), so the server knows nothing of its drivers."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from pydantic import ValidationError

from api.auth import USER_ROLES, Role, mint_token
from api.observability import configure_logging
from engine.runtime import ClusterUnreachable, Deployment
from engine.settings import Settings
from engine.store.base import StoreError

log = logging.getLogger("tracking")
COMMANDS_GROUP = "tracking.commands"


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        lines = [f"  TRACKING_{'_'.join(str(x) for x in err['loc']).upper()}: {err['msg']}"
                 for err in e.errors()]
        raise SystemExit("tracking: invalid configuration:\n" + "\n".join(lines)) from None


def serve(args: argparse.Namespace) -> int:
    # The websockets library refuses request lines over 8 KiB with a 414 that some clients wait
    # on until they time out; allow long (refused later, with a clear error) ids. Read at import.
    os.environ.setdefault("WEBSOCKETS_MAX_LINE_LENGTH", "65536")
    import uvicorn

    if args.metrics_port is not None:
        os.environ["TRACKING_METRICS_PORT"] = str(args.metrics_port)
    if args.metrics_host is not None:
        os.environ["TRACKING_METRICS_HOST"] = args.metrics_host
    settings = _settings()
    try:
        secret = settings.resolved_secret()
        service_secret = settings.resolved_service_secret()
    except (RuntimeError, OSError) as e:
        print(f"tracking: {e}", file=sys.stderr)
        return 2
    if args.workers > 1 and settings.engine == "local":
        print("tracking: --workers > 1 needs the Ray engine (TRACKING_ENGINE=ray)", file=sys.stderr)
        return 2
    deployment = Deployment(settings)
    try:
        try:
            # Workers join the same engine and agree on the secret.
            os.environ.update(deployment.start())
        except (StoreError, ClusterUnreachable) as e:
            print(f"tracking: {getattr(e, 'detail', e)}", file=sys.stderr)
            return 2
        os.environ["TRACKING_JWT_SECRET"] = secret
        os.environ["TRACKING_SERVICE_SECRET"] = service_secret
        if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Workers' counters are merged from files here at /metrics.
            metrics_dir = tempfile.mkdtemp(prefix="tracking-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uv_kwargs = {
            "host": args.host, "port": args.port, "log_level": args.log_level, "log_config": None,
            "ws_max_size": 1 << 20, "ws_ping_interval": 20.0, "ws_ping_timeout": 20.0,
            # Prepared frames written once for every watcher (api/wsproto.py); a compressed
            # frame could not be shared between sockets.
            "ws": "api.wsproto:TrackingWebSocketProtocol", "ws_per_message_deflate": False,
            "timeout_graceful_shutdown": 5, "access_log": False,
        }
        # uvicorn stops gracefully on SIGTERM / SIGINT, then raises the signal again with the
        # handler it found, so that the default action follows. Ray's driver set that handler
        # to exit with the signal's number, and Python's SIGINT one raises KeyboardInterrupt:
        # either way `tracking serve` would end with an error after a clean stop. Told to stop,
        # it stops: take note and return 0 once the engine is stopped too.
        stopping: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: stopping.append(signum))
        if args.workers > 1:
            uvicorn.run("api.app:app_from_env", factory=True, workers=args.workers, **uv_kwargs)
        else:
            from api.app import create_app

            uvicorn.run(create_app(Settings()), **uv_kwargs)
    finally:
        deployment.stop()
    return 0


def token(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        # A service token (what the order and notification services receive) is signed with
        # the service secret, never with the users' one.
        if args.role == Role.SERVICE.value:
            secret = settings.resolved_service_secret()
        else:
            secret = settings.resolved_secret()
    except (RuntimeError, OSError) as e:
        print(f"tracking: {e}", file=sys.stderr)
        return 2
    print(mint_token(secret, args.role, args.sub, args.ttl))
    return 0


def shards(args: argparse.Namespace) -> int:
    """Where the engine's actors run: one JSON line per shard and the dispatcher."""
    settings = _settings()
    if settings.engine != "ray" or not settings.ray_address:
        print("tracking: `tracking shards` asks a running cluster: set TRACKING_RAY_ADDRESS"
              " (and TRACKING_RAY_NAMESPACE) as for `tracking serve`", file=sys.stderr)
        return 2
    from engine.runtime import ray_cluster

    try:
        ray_cluster.join(settings)
    except ClusterUnreachable as e:
        print(f"tracking: {e}", file=sys.stderr)
        return 2
    try:
        found = ray_cluster.placements(settings, args.timeout)
    finally:
        ray_cluster.shutdown()
    names = [f"shard-{i:03d}" for i in range(settings.shards)] + ["outbox"]
    for name in names:
        node, pid = found.get(name, (None, None))
        print(json.dumps({"actor": name, "node": node, "pid": pid}))
    return 0 if len(found) == len(names) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tracking` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}
    if argv and argv[0] in plugins:
        command: Callable[[list[str]], int] = plugins[argv[0]].load()
        return command(argv[1:])
    p = argparse.ArgumentParser(prog="tracking", description="Real-time delivery tracking")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the HTTP/WebSocket server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8500)
    s.add_argument("--workers", type=int, default=1, help="API processes (Ray engine)")
    s.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--log-format", default="auto", choices=["auto", "json", "text"],
                   help="json lines, or a human format (auto: text on a terminal)")
    s.add_argument("--metrics-port", type=int, default=None,
                   help="also serve /metrics without a token on this port (TRACKING_METRICS_PORT)")
    s.add_argument("--metrics-host", default=None,
                   help="address of the metrics port (default 127.0.0.1, TRACKING_METRICS_HOST)")
    t = sub.add_parser("token", help="print a JWT signed with the server's secret")
    roles = sorted([r.value for r in USER_ROLES] + [Role.SERVICE.value])
    t.add_argument("--role", required=True, choices=roles)
    t.add_argument("--sub", required=True)
    t.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    w = sub.add_parser("shards", help="where each shard (and the outbox dispatcher) runs, as"
                       " JSON lines; exit 1 if one does not answer (restarting)")
    w.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each")
    for name, ep in sorted(plugins.items()):
        sub.add_parser(name, help=f"see `tracking {name} --help` ({ep.value.split(':')[0]})")
    args = p.parse_args(argv)
    if args.command == "serve":
        configure_logging(args.log_level, args.log_format)
        os.environ["TRACKING_LOG_LEVEL"] = args.log_level
        os.environ["TRACKING_LOG_FORMAT"] = args.log_format
        return serve(args)
    if args.command == "shards":
        return shards(args)
    return token(args)


if __name__ == "__main__":
    raise SystemExit(main())
