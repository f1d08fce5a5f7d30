"""Server lifecycle: migrate, listen, sweep zombies, schedule runs, stop gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web
from loguru import logger

from server import db, lazarus, pg_notify, scheduler
from server.app import build_app
from server.context import Services
from server.migrate import upgrade as upgrade_schema
from server.settings import ServerSettings


def open_services(settings: ServerSettings) -> Services:
    """Engine + migrations + default tenant: everything the app and the CLI commands share."""
    engine = db.create_db_engine(
        settings.database_url, pool_size=settings.worker_threads + 4,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    upgrade_schema(engine)
    db.ensure_default_tenant(engine)
    return Services(settings=settings, engine=engine)


async def serve(settings: ServerSettings) -> None:
    services = open_services(settings)
    runner = web.AppRunner(build_app(services), access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = _bound_port(runner, settings.port)
    url = db.shown_url(settings.database_url)
    logger.info("local-agent-server listening on http://{}:{} (auth: {}, database: {})",
                settings.host, port, settings.auth, url)
    logger.info("web UI: {}", settings.model_copy(update={"port": port}).ui_url)
    sweeping = settings.zombies_enabled or settings.retention_days is not None
    zombies = asyncio.create_task(lazarus.run(services, stop)) if sweeping else None
    scheduling = asyncio.create_task(scheduler.run(services, stop)) if settings.scheduler_enabled else None
    listener = pg_notify.start_listener(services.engine, services.events, services.instance_id)
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        stop.set()
        services.events.close()  # long polls return now, so the drain below is quick
        for service in (zombies, scheduling):
            if service is not None:
                await service  # releases its lease
        await runner.cleanup()
        if listener is not None:
            await loop.run_in_executor(None, listener.stop)
        services.engine.dispose()
        logger.info("stopped")


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured
