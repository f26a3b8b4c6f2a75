"""``payhub`` command line (also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import date

import asyncpg

from config.settings import ConfigError, Settings, load_settings
from connectors.base import ConnectorError
from crypto.audit_chain import AuditChainError
from crypto.keyring import PURPOSES, KeyringError
from crypto.pki import PkiError, PkiPaths, init_pki, issue_client, revoke_client
from gateway.store.migrate import MigrationError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payhub", description="payhub payment gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate, then serve the mTLS API and the ops listener")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)"
    )
    serve.add_argument("--sandbox", action="store_true", help="also run the sandbox simulators in-process")

    commands.add_parser(
        "sandbox", help="run the sandbox simulators alone (acquirer, billers, bank, e-wallet, …)"
    )

    commands.add_parser("migrate", help="apply pending SQL migrations (idempotent)")
    commands.add_parser(
        "demo",
        help="scripted tour against a gateway it starts itself (bill, OTP, top-up, balance, refund, webhook)",
    )

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

    keys = commands.add_parser("keys", help="data-encryption keys of the card vault")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_commands.add_parser(
        "rotate",
        help="new key version for new data; re-wraps every data key (under PAYHUB_NEW_KEK when set); "
        "old ciphertexts stay readable",
    )
    rotate.add_argument("--purpose", choices=list(PURPOSES), default="pan")

    recon = commands.add_parser("recon", help="reconcile biller settlement files with the hub's postings")
    recon_commands = recon.add_subparsers(dest="recon_command", required=True)
    recon_run = recon_commands.add_parser(
        "run", help="reconcile one day; prints matched / mismatched / missing"
    )
    recon_run.add_argument("--date", required=True, type=date.fromisoformat, help="YYYY-MM-DD")
    recon_run.add_argument("--connector", help="only this biller connector")

    audit = commands.add_parser("audit", help="tamper-evident audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="walk the hash chain; exit 1 naming the first bad row")
    audit_commands.add_parser(
        "seal", help="seal committed events into the chain now (the gateway does it every second)"
    )
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


def _with_database(settings: Settings, action: Callable[[asyncpg.Pool], Awaitable[int]]) -> int:
    """Run ``action`` with a migrated pool on the event loop payhub serves on."""
    from gateway.logs import configure_logging
    from gateway.server import run_loop
    from gateway.store.db import open_pool

    result = 0

    async def run() -> None:
        nonlocal result
        async with open_pool(settings) as pool:
            result = await action(pool)

    configure_logging(settings.server.log_level)
    run_loop(run())
    return result


async def _report_schema(pool: asyncpg.Pool) -> int:
    from gateway.store.migrate import current_version

    async with pool.acquire() as conn:
        print(f"database schema at version {await current_version(conn)}")
    return 0


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    import os

    from crypto.keyring import KEK_ENV, load_kek
    from gateway.audit import record
    from gateway.store.keyring import rotate

    kek = load_kek(settings.keys_dir, os.environ)
    # A KEK change: the new one comes in PAYHUB_NEW_KEK; afterwards every process runs with PAYHUB_KEK=<new>.
    new_kek = (
        load_kek(settings.keys_dir, {KEK_ENV: os.environ["PAYHUB_NEW_KEK"]})
        if "PAYHUB_NEW_KEK" in os.environ
        else None
    )

    async def run(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            kid = await rotate(conn, kek, purpose=args.purpose, new_kek=new_kek)
            await record(
                conn,
                actor="payhub-cli",
                action="keys.rotate",
                outcome="success",
                object_id=f"dek:{kid}",
                details={"purpose": args.purpose, "kek": (new_kek or kek).kek_id},
            )
            total = await conn.fetchval("SELECT count(*) FROM data_keys")
        print(
            f"new {args.purpose} key version {kid}; "
            f"{total} data keys wrapped under KEK {(new_kek or kek).kek_id}"
        )
        return 0

    return _with_database(settings, run)


def _recon(settings: Settings, args: argparse.Namespace) -> int:
    import aiohttp

    from connectors.http import OutboundClient
    from connectors.registry import ConnectorDeps, build_connectors
    from gateway.metrics import Metrics
    from gateway.services.recon import reconcile

    async def run(pool: asyncpg.Pool) -> int:
        async with aiohttp.ClientSession() as session:
            metrics = Metrics()
            connectors = build_connectors(
                settings, ConnectorDeps(settings, OutboundClient(session, metrics), metrics)
            )
            await connectors.start()
            try:
                chosen = {
                    name: connector
                    for name, connector in connectors.billers.items()
                    if args.connector in (None, name)
                }
                if not chosen:
                    print(f"no biller connector named {args.connector!r}", file=sys.stderr)
                    return 2
                totals = [0, 0, 0, 0]
                failed = 0
                for connector in chosen.values():
                    for biller in await connector.describe():
                        try:
                            result = await reconcile(
                                pool, connector, biller.id, args.date, timezone=biller.timezone
                            )
                        except ConnectorError as exc:  # this biller's file is not available: say so, go on
                            print(f"{args.date} {biller.id}: no reconciliation file ({exc})")
                            failed += 1
                            continue
                        print(result.line())
                        for index, value in enumerate(
                            (
                                result.matched,
                                result.mismatched,
                                result.missing_at_hub,
                                result.missing_at_biller,
                            )
                        ):
                            totals[index] += value
                print(
                    f"total: matched {totals[0]}, mismatched {totals[1]}, "
                    f"missing at hub {totals[2]}, missing at biller {totals[3]}"
                    + (f"; {failed} biller(s) without a file" if failed else "")
                )
                return 1 if failed else 0
            finally:
                await connectors.close()

    return _with_database(settings, run)


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from crypto.audit_chain import load_seal_key
    from gateway.store.audit import verify_chain
    from gateway.workers.audit_sealer import seal_pending

    key = load_seal_key(settings.keys_dir, create=args.audit_command == "seal")

    async def seal(pool: asyncpg.Pool) -> int:
        print(f"sealed {await seal_pending(pool, key)} events")
        return 0

    async def verify(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            report = await verify_chain(conn, key)
        if report.tampered is not None:
            bad = report.tampered
            seq = f" (event seq {bad.seq})" if bad.seq is not None else ""
            print(f"audit chain TAMPERED at position {bad.position}{seq}: {bad.reason}")
            print(f"{report.sealed} events verified before it")
            return 1
        print(
            f"audit chain OK: {report.sealed} sealed events, {report.checkpoints} signed checkpoints; "
            f"{report.unsealed} recent events not sealed yet"
        )
        return 0

    return _with_database(settings, seal if args.audit_command == "seal" else verify)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "pki":
            return _pki(settings, args)
        if args.command == "migrate":
            return _with_database(settings, _report_schema)
        if args.command == "audit":
            return _audit(settings, args)
        if args.command == "keys":
            return _keys(settings, args)
        if args.command == "recon":
            return _recon(settings, args)
        if args.command == "demo":
            from gateway.demo import demo

            return demo(settings)
        from gateway.server import sandbox_forever, serve_forever

        if args.command == "sandbox":
            sandbox_forever(settings)
            return 0
        serve_forever(settings, workers=args.workers, sandbox=args.sandbox)
        return 0
    except (ConfigError, PkiError, AuditChainError, MigrationError, KeyringError, ConnectorError) as exc:
        print(f"payhub: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
