"""Registering step-up devices (clients) and managing allow/deny lists (operators), audited."""

from __future__ import annotations

import base64
import binascii

import asyncpg

from crypto.stepup import public_key_valid
from gateway import audit, errors
from gateway.identity import Identity
from gateway.ids import new_id
from gateway.store import risk as store
from gateway.store.types import Connection
from gateway.views import schemas


async def register_device(
    pool: asyncpg.Pool, identity: Identity, params: schemas.CreateDeviceRequest, source: str | None
) -> tuple[store.Device, bool]:
    """→ (device, created). The same customer, device and key again is the same device (200);
    another key for a registered device is refused: a stolen session must not swap the key."""
    try:
        key = base64.b64decode(params.public_key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.InvalidRequest("public_key must be base64.", param="public_key") from exc
    if len(key) != 32 or not public_key_valid(key):
        raise errors.InvalidRequest("public_key must be a 32-byte Ed25519 public key.", param="public_key")
    async with pool.acquire() as conn, conn.transaction():
        device, created = await store.register_device(
            conn,
            device=new_id("dvc"),
            tenant=identity.tenant,
            customer_id=params.customer,
            device_id=params.device_id,
            public_key=key,
        )
        if not created and device.public_key != key:
            raise errors.Conflict(
                "This device is registered with another key.", code="device_exists", param="device_id"
            )
        if created:
            await audit.record(
                conn,
                actor=identity.spiffe_id,
                action="device.register",
                outcome="success",
                tenant=identity.tenant,
                source=source,
                object_id=device.id,
                details={"customer": params.customer},
            )
    return device, created


async def add_list_entry(
    pool: asyncpg.Pool, operator: Identity, list_: str, params: schemas.ListEntryRequest, source: str | None
) -> store.ListEntry:
    value = params.value.lower() if params.kind == "email" else params.value
    async with pool.acquire() as conn, conn.transaction():
        entry = await store.add_list_entry(
            conn,
            entry_id=new_id("rle"),
            tenant=params.tenant,
            list_=list_,
            kind=params.kind,
            value=value,
            note=params.note,
            created_by=operator.spiffe_id,
        )
        await _audited(conn, operator, f"risk.{list_}_list.add", entry, source)
    return entry


async def delete_list_entry(
    pool: asyncpg.Pool, operator: Identity, list_: str, entry_id: str, source: str | None
) -> store.ListEntry:
    async with pool.acquire() as conn, conn.transaction():
        entry = await store.delete_list_entry(conn, list_=list_, entry_id=entry_id)
        if entry is None:
            raise errors.NotFound(f"No such {list_} list entry: '{entry_id}'.", param="id")
        await _audited(conn, operator, f"risk.{list_}_list.remove", entry, source)
    return entry


async def _audited(
    conn: Connection, operator: Identity, action: str, entry: store.ListEntry, source: str | None
) -> None:
    """An operator's list change, audited with the tenant it applies to (none: every tenant)."""
    await audit.record(
        conn,
        actor=operator.spiffe_id,
        action=action,
        outcome="success",
        tenant=entry.tenant,
        source=source,
        object_id=entry.id,
        details={"kind": entry.kind},
    )
