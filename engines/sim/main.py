"""The simulator as a process: listen, serve until SIGINT/SIGTERM, shut down cleanly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys

from aiohttp import web

from ..announcements import AnnouncementSocket
from .engine import SimEngine
from .flags import configured_preset, parse_args
from .server import build_app

_SHUTDOWN_TIMEOUT_S = 5.0
# Envoy forwards a header block of up to 60 KiB (max_request_headers_kb's default), so no
# one header (or request line) it forwards is longer; aiohttp's 8 KiB default would answer
# a longer one with a plain-text 400 instead of serving it.
_MAX_HEADER_BYTES = 64 * 1024
_SIGNAL_RECHECK_S = 3600.0


async def _serve(args: argparse.Namespace) -> int:
    preset = configured_preset(args)
    announcements = None
    if args.announcements:
        try:
            announcements = AnnouncementSocket(args.host, args.port)
        except OSError as exc:  # as Fairlane's vLLM scheduler: they cost only themselves
            print(
                f"fairlane-sim: not listening for Fairlane's announcements on UDP "
                f"{args.host}:{args.port}: {exc}",
                file=sys.stderr,
            )
    engine = SimEngine(
        preset,
        max_waiting=args.max_queue,
        scheduling_policy=args.scheduling_policy,
        isolate_prefills=args.isolate_prefills,
        announcements=announcements,
        heavy_prefill_tokens=args.heavy_prefill_tokens,
    )
    app = build_app(engine, args.model or ["sim-model"], preset)
    # handler_cancellation: a client that disconnects while its request is still queued
    # cancels the handler, which aborts the request (vLLM also aborts on disconnect).
    runner = web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        max_line_size=_MAX_HEADER_BYTES,
        max_field_size=_MAX_HEADER_BYTES,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await engine.start()
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, args.host, args.port, ssl_context=_tls(args)).start()
        except OSError as exc:
            print(f"fairlane-sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        scheme = "http" if args.ssl_certfile is None else "https"
        print(
            f"fairlane-sim ready on {scheme}://{args.host}:{args.port} (preset {preset.name})",
            flush=True,
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _SIGNAL_RECHECK_S)
    finally:
        await engine.stop()  # ends in-flight streams first, so the cleanup is quick
        await runner.cleanup()
        if announcements is not None:
            announcements.close()
    return 0


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.ssl_certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
    return context


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM; 0 on a clean shutdown."""
    return asyncio.run(_serve(parse_args(argv)))
