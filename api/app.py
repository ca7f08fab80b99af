"""The FastAPI application: REST routes, WebSocket gateway, pages, and the engine behind them."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, observability, pages, routes, ws
from api.auth import TokenVerifier
from api.gateway import Gateway
from api.updates import LeanUpdates, Live
from engine.runtime import connect
from engine.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings) -> FastAPI:
    """Build the app for `settings`; the engine is connected when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await connect(settings, observe=observability.observe_batch)
        live.engine = engine.client
        app.state.outbox = engine.outbox
        gateway = Gateway(engine.client, settings.ws_queue_max)
        ops_feed = ws.OpsFeed(engine.client)
        app.state.engine = engine.client
        app.state.gateway = gateway
        app.state.ops_feed = ops_feed
        gateway.start()
        try:
            yield
        finally:
            await ops_feed.stop()
            live.engine = None
            await gateway.stop()
            await engine.close()

    app = FastAPI(
        title="Delivery tracking",
        version="0.1.0",
        description="Live delivery tracking: REST, WebSocket, JWT auth. See API.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    tokens = TokenVerifier(settings.resolved_secret())
    app.state.tokens = tokens
    live = Live()
    app.add_middleware(observability.RequestLogMiddleware)
    # Added last, so outermost: location updates skip the framework (api/updates.py).
    app.add_middleware(LeanUpdates, live=live, tokens=tokens, max_body_bytes=MAX_BODY_BYTES)
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(ws.router)
    app.include_router(pages.router)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings from the TRACKING_* environment."""
    observability.configure_logging(
        os.environ.get("TRACKING_LOG_LEVEL", "info"), os.environ.get("TRACKING_LOG_FORMAT", "json")
    )
    return create_app(Settings())
