"""The FastAPI application: REST routes, WebSocket gateway, pages, and the engine behind them."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, observability, pages, routes, ws
from api.auth import TokenVerifier
from api.gateway import Gateway
from api.gcpolicy import GcPolicy
from api.updates import LeanUpdates, Live
from engine.runtime import connect
from engine.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings) -> LeanUpdates:
    """Build the app for `settings`; the engine is connected when the app starts.

    The ASGI app returned is the location updates' front door (`api.updates.LeanUpdates`), in
    front of the FastAPI app and its whole middleware stack, which serves everything else."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        observability.watch_gc()
        lag = asyncio.get_running_loop().create_task(observability.watch_loop_lag())
        engine = await connect(settings, observe=observability.observe_batch)
        live.engine = engine.client
        app.state.outbox = engine.outbox
        gateway = Gateway(engine.client, settings.ws_queue_max)
        ops_feed = ws.OpsFeed(engine.client)
        app.state.engine = engine.client
        app.state.gateway = gateway
        app.state.ops_feed = ops_feed
        gateway.start()
        collector = asyncio.get_running_loop().create_task(
            GcPolicy(lambda: gateway.connections).run()
        )
        try:
            yield
        finally:
            collector.cancel()
            lag.cancel()
            await ops_feed.stop()
            live.engine = None
            await gateway.stop()
            await engine.close()

    app = FastAPI(
        title="Delivery tracking",
        version="0.1.0",
        description="Live delivery tracking: REST, WebSocket, JWT auth. See API.md.",
        lifespan=lifespan,
        # Off: with no OpenTelemetry provider configured it only cost each request a look
        # through the environment (6% of the API process under load).
        telemetry={"tracing": False, "metrics": False},
    )
    app.state.settings = settings
    tokens = TokenVerifier(settings.resolved_secret())
    app.state.tokens = tokens
    live = Live()
    app.add_middleware(observability.RequestLogMiddleware)
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(ws.router)
    app.include_router(pages.router)
    return LeanUpdates(app, live, tokens, MAX_BODY_BYTES)


def app_from_env() -> LeanUpdates:
    """Factory for uvicorn workers: settings from the TRACKING_* environment."""
    observability.configure_logging(
        os.environ.get("TRACKING_LOG_LEVEL", "info"), os.environ.get("TRACKING_LOG_FORMAT", "json")
    )
    return create_app(Settings())
