"""The `tracking` command: `serve`, `token`, `sim`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence

from pydantic import ValidationError

from api.auth import USER_ROLES, Role, mint_token
from api.observability import configure_logging
from engine.settings import Settings
from engine.store import StoreError, check_data_dir

log = logging.getLogger("tracking")


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

    settings = _settings()
    try:
        check_data_dir(settings.data_dir, settings.shards if settings.journal else 0)
    except StoreError as e:
        print(f"tracking: {e.detail}", file=sys.stderr)
        return 2
    try:
        secret = settings.resolved_secret()
    except (RuntimeError, OSError) as e:
        print(f"tracking: {e}", file=sys.stderr)
        return 2
    if args.workers > 1 and settings.engine == "local":
        print("tracking: --workers > 1 needs the Ray engine (TRACKING_ENGINE=ray)", file=sys.stderr)
        return 2
    owner = False
    if settings.engine == "ray":
        from engine import ray_runtime

        ray_runtime.init(settings)
        owner = not ray_runtime.shards_exist(settings)
        ray_runtime.ensure_shards(settings)
        # Workers join the same instance and agree on the secret.
        os.environ["TRACKING_RAY_ADDRESS"] = ray_runtime.address()
    os.environ["TRACKING_JWT_SECRET"] = secret
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers' counters are merged from files here at /metrics.
        metrics_dir = tempfile.mkdtemp(prefix="tracking-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    uv_kwargs = {
        "host": args.host, "port": args.port, "log_level": args.log_level, "log_config": None,
        "ws_max_size": 1 << 20, "ws_ping_interval": 20.0, "ws_ping_timeout": 20.0,
        "timeout_graceful_shutdown": 5, "access_log": False,
    }
    try:
        if args.workers > 1:
            uvicorn.run("api.app:app_from_env", factory=True, workers=args.workers, **uv_kwargs)
        else:
            from api.app import create_app

            uvicorn.run(create_app(Settings()), **uv_kwargs)
    finally:
        if settings.engine == "ray":
            from engine import ray_runtime

            if owner:
                ray_runtime.kill_shards(settings)
            ray_runtime.shutdown()
    return 0


def token(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        secret = settings.resolved_secret()
    except (RuntimeError, OSError) as e:
        print(f"tracking: {e}", file=sys.stderr)
        return 2
    print(mint_token(secret, args.role, args.sub, args.ttl))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tracking` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sim":
        from sim.cli import main as sim_main

        code: int = sim_main(argv[1:])
        return code
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
    t = sub.add_parser("token", help="print a JWT signed with the server's secret")
    roles = sorted([r.value for r in USER_ROLES] + [Role.SERVICE.value])
    t.add_argument("--role", required=True, choices=roles)
    t.add_argument("--sub", required=True)
    t.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    sub.add_parser("sim", help="the simulator (see `tracking sim --help`)")
    args = p.parse_args(argv)
    if args.command == "serve":
        configure_logging(args.log_level, args.log_format)
        os.environ["TRACKING_LOG_LEVEL"] = args.log_level
        os.environ["TRACKING_LOG_FORMAT"] = args.log_format
        return serve(args)
    return token(args)


if __name__ == "__main__":
    raise SystemExit(main())
