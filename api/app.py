"""The FastAPI application: REST routes, WebSocket gateway, pages, and the engine behind them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, observability, pages, routes, ws
from api.gateway import Gateway
from engine.client import EngineClient, Transport
from engine.dispatcher import Dispatcher, Outbox
from engine.settings import Settings

log = logging.getLogger(__name__)


def _transport(settings: Settings) -> tuple[Transport, Outbox]:
    """The engine's transport, and the outbox: a Dispatcher to run here (local) or the actor's."""
    if settings.engine == "local":
        from engine.local_runtime import LocalTransport

        return LocalTransport(settings), Dispatcher(settings)
    from engine import ray_runtime

    ray_runtime.init(settings)
    ray_runtime.ensure_shards(settings)
    dispatcher = ray_runtime.ensure_dispatcher(settings)
    return ray_runtime.RayTransport(settings), ray_runtime.RayOutbox(dispatcher)


def create_app(settings: Settings) -> FastAPI:
    """Build the app for `settings`; the engine is connected when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        transport, outbox = _transport(settings)
        delivering = (
            asyncio.get_running_loop().create_task(outbox.run())
            if isinstance(outbox, Dispatcher) else None
        )
        app.state.outbox_counts = outbox.counts
        app.state.outbox_dead_letters = outbox.dead_letters
        engine = EngineClient(transport, observe=observability.observe_batch)
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
            if delivering is not None:
                delivering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await delivering
            await outbox.close()
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
    app.add_middleware(observability.RequestLogMiddleware)
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
