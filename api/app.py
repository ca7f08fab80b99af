"""The FastAPI application: REST routes, WebSocket gateway, pages, and the engine behind them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, routes, ws
from api.gateway import Gateway
from engine.client import EngineClient, Transport
from engine.settings import Settings

log = logging.getLogger(__name__)


def _transport(settings: Settings) -> Transport:
    if settings.engine == "local":
        from engine.local_runtime import LocalTransport

        return LocalTransport(settings)
    from engine import ray_runtime

    ray_runtime.init(settings)
    ray_runtime.ensure_shards(settings)
    return ray_runtime.RayTransport(settings)


def create_app(settings: Settings) -> FastAPI:
    """Build the app for `settings`; the engine is connected when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        transport = _transport(settings)
        engine = EngineClient(transport)
        gateway = Gateway(engine, settings.ws_queue_max)
        ops_feed = ws.OpsFeed(engine)
        app.state.engine = engine
        app.state.gateway = gateway
        app.state.ops_feed = ops_feed
        gateway.start()
        try:
            yield
        finally:
            await ops_feed.stop()
            await gateway.stop()
            close = getattr(transport, "close", None)
            if close is not None:
                await close()

    app = FastAPI(
        title="Delivery tracking",
        version="0.1.0",
        description="Live delivery tracking: REST, WebSocket, JWT auth. See API.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.jwt_secret = settings.resolved_secret()
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(ws.router)
    try:
        from api import pages
    except ImportError:
        pass
    else:
        app.include_router(pages.router)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings from the TRACKING_* environment."""
    return create_app(Settings())
