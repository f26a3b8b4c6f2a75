"""Which feature paths a CEL expression reads, and the smallest activation that serves them.

Two uses, both about cost and explanation rather than semantics:

* ``reasons[]`` must show the *observed values* of a decision (DESIGN §9), so each rule
  knows the dotted paths it reads (``velocity.ip.h1.declines``, ``amount_usd``) and the
  caller reports their values.
* Converting a Python dict into CEL values costs about a microsecond per value, and the
  full velocity block alone is 60 cells; converting it for every payment would cost more
  than evaluating all the rules. A ruleset therefore projects the features onto the paths
  its rules read before handing them to CEL.

``Program.variables()`` only names the top-level identifiers, so the dotted tails come from
the source text: string literals and comments are blanked, selection chains
(``a.b.c``) are read with a regex, a trailing ``.name(`` is a method call (the receiver is
what is read), and only chains whose root CEL reports as a variable are kept (which drops
keywords, functions and field names after a literal). Names bound by comprehension macros
(the ``x`` of ``list.exists(x, …)``) are dropped as well.

The projection is safe by construction: every path keeps the *whole* value at its end, and
any access the regex stops at (an index ``[…]``, a parenthesis, a method call) only reaches
below a value that was kept whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# A string literal in any CEL form (raw, bytes, triple-quoted) or a line comment.
_LITERALS_AND_COMMENTS = re.compile(
    r"""(?:[rRbB]{0,2})(?:'''[\s\S]*?'''|\"\"\"[\s\S]*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")"""
    r"""|//[^\n]*"""
)
# A selection chain not preceded by a dot or a word character (so not ``x).y`` nor ``1e5``).
_CHAIN = re.compile(r"(?<![.\w])([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)(\s*\()?")
_MACRO_BINDER = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")

# A projection trie: a key maps to the trie below it, or to None for "keep the whole value".
Trie = dict[str, "Trie | None"]


def referenced_paths(source: str, variables: Iterable[str]) -> tuple[str, ...]:
    """The dotted feature paths *source* reads, in first-seen order.

    *variables* is ``Program.variables()`` for the same source: the roots CEL itself saw.
    """
    text = _LITERALS_AND_COMMENTS.sub('""', source)
    roots = set(variables) - set(_MACRO_BINDER.findall(text))
    seen: dict[str, None] = {}
    for match in _CHAIN.finditer(text):
        parts = [p.strip() for p in match.group(1).split(".")]
        if match.group(2):  # ``f(`` or ``recv.method(``: the callee is not data
            parts = parts[:-1]
        if parts and parts[0] in roots:
            seen[".".join(parts)] = None
    return tuple(seen)


def lookup(features: Mapping[str, Any], path: str) -> Any:
    """The value at dotted *path*, or None when any step is missing or not a mapping."""
    value: Any = features
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def build_trie(paths: Iterable[str]) -> Trie:
    """A trie of *paths* where a shorter path wins over the longer ones below it."""
    trie: Trie = {}
    for path in sorted(paths, key=lambda p: p.count(".")):
        node: Trie = trie
        *inner, last = path.split(".")
        for part in inner:
            child = node.setdefault(part, {})
            if child is None:
                break
            node = child
        else:
            node[last] = None
    return trie


def project(features: Mapping[str, Any], trie: Trie) -> dict[str, Any]:
    """The part of *features* that *trie* reaches; absent keys stay absent (CEL then errors alike)."""
    out: dict[str, Any] = {}
    for key, sub in trie.items():
        if key not in features:
            continue
        value = features[key]
        if sub is None or not isinstance(value, Mapping):
            out[key] = value
        else:
            out[key] = project(value, sub)
    return out
