"""``payhub-billpay``: run the Bill Pay app, starting a sandbox hub first when none is running.

    payhub-billpay    # hub at https://localhost:8443 (started with --sandbox if down), app on :8080
payhub-billpay --port 8081 --hub-url https://localhost:9443 --payhub-home /tmp/ph --start-hub never
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from .app import AppConfig, create_app

log = logging.getLogger("payhub_billpay")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="payhub-billpay", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=env.get("BILLPAY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("BILLPAY_PORT", "8080")))
    parser.add_argument("--hub-url", default=env.get("PAYHUB_URL", "https://localhost:8443"))
    parser.add_argument(
        "--payhub-home",
        type=Path,
        default=Path(env.get("PAYHUB_HOME", "var")),
        help="where the dev PKI lives",
    )
    parser.add_argument("--tenant", default="acme", help="the tenant whose client certificate the app uses")
    parser.add_argument("--cert", type=Path, default=env.get("PAYHUB_CERT"))
    parser.add_argument("--key", type=Path, default=env.get("PAYHUB_KEY"))
    parser.add_argument("--cacert", type=Path, default=env.get("PAYHUB_CACERT"))
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="app users and sessions (default <home>/billpay)"
    )
    parser.add_argument(
        "--webhook-url", default=None, help="where the hub posts events (default this app, http)"
    )
    parser.add_argument(
        "--start-hub",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto: start `payhub serve --sandbox` when nothing answers at --hub-url",
    )
    return parser.parse_args(argv)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_hub(home: Path, hub_url: str) -> subprocess.Popen[bytes]:
    parts = urlsplit(hub_url)
    env = dict(os.environ, PAYHUB_HOME=str(home.resolve()), PAYHUB_LISTEN=f"127.0.0.1:{parts.port or 443}")
    subprocess.run([sys.executable, "-m", "gateway", "pki", "init"], env=env, check=True)
    home.mkdir(parents=True, exist_ok=True)
    log_file = (home / "billpay-hub.log").open("ab")
    print(f"starting payhub serve --sandbox (log: {home / 'billpay-hub.log'})", flush=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--sandbox"], env=env, stdout=log_file, stderr=log_file
    )
    deadline = time.monotonic() + 120
    while not port_open(parts.hostname or "localhost", parts.port or 443):
        if process.poll() is not None:
            raise SystemExit(f"payhub serve exited with {process.returncode}; see {home / 'billpay-hub.log'}")
        if time.monotonic() > deadline:
            process.terminate()
            raise SystemExit("payhub serve did not start within 120 s")
        time.sleep(0.25)
    return process


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home: Path = args.payhub_home
    hub_process = None
    parts = urlsplit(args.hub_url)
    running = port_open(parts.hostname or "localhost", parts.port or 443)
    if args.start_hub == "always" or (args.start_hub == "auto" and not running):
        hub_process = start_hub(home, args.hub_url)
    pki = home / "pki"
    config = AppConfig(
        hub_url=args.hub_url,
        cert=args.cert or pki / "clients" / f"{args.tenant}.pem",
        key=args.key or pki / "clients" / f"{args.tenant}.key",
        cacert=args.cacert or pki / "ca.pem",
        data_dir=args.data_dir or home / "billpay",
        host=args.host,
        port=args.port,
        webhook_url=args.webhook_url,
    )
    app = create_app(config)

    async def announce(_app: web.Application) -> None:
        print(f"Bill Pay is running at http://{args.host}:{args.port}/  (hub {args.hub_url})", flush=True)

    app.on_startup.append(announce)
    try:
        web.run_app(app, host=args.host, port=args.port, print=None, handle_signals=True)
    finally:
        if hub_process is not None:
            hub_process.send_signal(signal.SIGTERM)
            try:
                hub_process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                hub_process.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
