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
from api.limits import BodyLimit, Limits
from api.metrics_port import open_listener, scrape
from api.order_check import OrderCheck
from api.updates import LeanUpdates, Live
from engine.runtime import connect
from engine.settings import Settings

log = logging.getLogger(__name__)


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
        order_check = app.state.order_check = (
            OrderCheck(settings.order_service_url, settings.resolved_service_secret(),
                       settings.order_check_timeout_s)
            if settings.start_check_order and settings.order_service_url else None
        )
        metrics_listener = None
        if settings.metrics_port is not None:
            metrics_listener = await open_listener(
                settings.metrics_host, settings.metrics_port,
                lambda: scrape(engine.client, engine.outbox),
            )
        try:
            yield
        finally:
            if metrics_listener is not None:
                metrics_listener.close()
            if order_check is not None:
                await order_check.close()
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
    limits = app.state.limits = Limits(settings)
    app.state.order_check = None
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(observability.RequestLogMiddleware)
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(ws.router)
    app.include_router(pages.router)
    return LeanUpdates(app, live, tokens, settings.max_body_bytes, limits, ws.watch)


def app_from_env() -> LeanUpdates:
    """Factory for uvicorn workers: settings from the TRACKING_* environment."""
    observability.configure_logging(
        os.environ.get("TRACKING_LOG_LEVEL", "info"), os.environ.get("TRACKING_LOG_FORMAT", "json")
    )
    return create_app(Settings())
