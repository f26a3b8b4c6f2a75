"""Splicing statement fragments into one statement (one round trip): renumber their parameters."""

from __future__ import annotations

import re

_PARAMETER = re.compile(r"\$(\d+)")


def shift(sql: str, by: int) -> str:
    """``sql`` with every parameter ``$n`` renumbered ``$(n + by)``, to follow another fragment's."""
    return _PARAMETER.sub(lambda m: f"${int(m.group(1)) + by}", sql)
