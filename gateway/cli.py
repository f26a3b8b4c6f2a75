"""``payhub`` command line (also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from config.settings import ConfigError, Settings, load_settings
from crypto.pki import PkiError, PkiPaths, init_pki, issue_client, revoke_client


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payhub", description="payhub payment gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate, then serve the mTLS API and the ops listener")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)"
    )

    commands.add_parser("migrate", help="apply pending SQL migrations (idempotent)")

    pki = commands.add_parser("pki", help="dev PKI: CA, server and client certificates, CRL")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True)
    pki_commands.add_parser(
        "init", help="create what is missing: CA, server cert, one client cert per tenant, CRL"
    )
    issue = pki_commands.add_parser("issue", help="issue a client certificate (+ .key and .p12)")
    issue.add_argument("name")
    issue.add_argument("--tenant", required=True)
    issue.add_argument("--role", required=True, choices=["client", "operator"])
    issue.add_argument("--days", type=int, default=365)
    revoke = pki_commands.add_parser("revoke", help="revoke a client certificate (CRL rewritten)")
    revoke.add_argument("name")
    return parser


def _pki(settings: Settings, args: argparse.Namespace) -> int:
    paths = PkiPaths(settings.pki_dir)
    if args.pki_command == "init":
        created = init_pki(paths, {tenant: t.role for tenant, t in settings.tenants.items()})
        for path in created:
            print(f"created {path}")
        print(f"PKI ready in {paths.root} ({len(created)} new files)")
    elif args.pki_command == "issue":
        if args.tenant not in settings.tenants:
            print(
                f"warning: tenant {args.tenant!r} is not in {settings.source}; the gateway will refuse it",
                file=sys.stderr,
            )
        cert = issue_client(paths, args.name, tenant=args.tenant, role=args.role, days=args.days)
        print(f"issued {cert} (+ {paths.client_key(args.name).name}, {paths.client_p12(args.name).name})")
    else:
        serial = revoke_client(paths, args.name)
        print(f"revoked {args.name} (serial {serial:x}); CRL rewritten: {paths.crl}")
    return 0


def _migrate(settings: Settings) -> int:
    from gateway.logs import configure_logging
    from gateway.server import run_loop
    from gateway.store.db import open_pool

    async def run() -> None:
        async with open_pool(settings):
            pass

    configure_logging(settings.server.log_level)
    run_loop(run())
    print("migrations applied")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "pki":
            return _pki(settings, args)
        if args.command == "migrate":
            return _migrate(settings)
        from gateway.server import serve_forever

        serve_forever(settings, workers=args.workers)
        return 0
    except (ConfigError, PkiError) as exc:
        print(f"payhub: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
