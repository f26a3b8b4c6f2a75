"""Config reload on SIGHUP: the current settings, swapped whole, and the listeners told of it.

The tenant table and the ``[risk]`` section are taken from the re-read file (a tenant disabled or
removed is refused on its next request, open connections included; the risk engine recompiles its
rules and swaps them at once, gateway/services/risk.py); every other setting keeps its start-up
value, because the listeners, sockets and pools built from it are not rebuilt. Components that
apply part of a new file subscribe; a listener that fails (a rule that does not compile) is logged
and keeps what it had.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import msgspec

from config.settings import ConfigError, Settings, load_settings
from gateway.logs import get_logger

log = get_logger("gateway.reload")

# Called with (old, new) after the swap; raising only logs (the reload stands).
Listener = Callable[[Settings, Settings], None]


class ConfigReloader:
    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self.current = settings
        self._env = env
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Re-read the file the settings came from; on any error keep the current ones and log."""
        old = self.current
        try:
            loaded = load_settings(old.source, env=os.environ if self._env is None else self._env)
        except ConfigError as exc:
            log.error("config.reload_failed", error=str(exc))  # noqa: TRY400 - the message is the reason
            return False
        # One assignment: a request reads either the old table or the new one, never a mix.
        self.current = msgspec.structs.replace(old, tenants=loaded.tenants, risk=loaded.risk)
        log.info("config.reloaded", source=old.source, **_tenant_changes(old, self.current))
        for listener in self._listeners:
            try:
                listener(old, self.current)
            except Exception:
                log.exception("config.listener_failed", listener=getattr(listener, "__qualname__", "?"))
        return True


def _tenant_changes(old: Settings, new: Settings) -> dict[str, list[str]]:
    before = {name for name, tenant in old.tenants.items() if tenant.enabled}
    after = {name for name, tenant in new.tenants.items() if tenant.enabled}
    return {"tenants_enabled": sorted(after - before), "tenants_disabled": sorted(before - after)}
