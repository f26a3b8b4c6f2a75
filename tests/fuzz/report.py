"""What the fuzzer sent and what failed: counts, distinct failures with reproducers, a summary.

A failure is kept, not raised, so that one run finds every distinct failure rather than the first
one hypothesis shrinks. Failures are grouped by (operation, check, title, status) and, for a 5xx,
by the exception the gateway logged for that request (its ``Request-Id``), so two different bugs
behind the same "500 on POST /v1/payments" are two findings. Each finding keeps its shortest
reproducer (a curl command with the client certificate) and the gateway's answer.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from schemathesis import Case, Response
from schemathesis.core.failures import Failure

BODY_EXCERPT = 300
MAX_LISTED = 40  # findings printed in full; the rest are counted


@dataclass(frozen=True, slots=True)
class Observed:
    phase: str
    operation: str
    check: str
    title: str
    status: int | None
    request_id: str | None
    curl: str
    answer: str


@dataclass(slots=True)
class Finding:
    operation: str
    check: str
    title: str
    status: int | None
    cause: str  # the gateway's logged exception for a 5xx, else ""
    example: Observed
    count: int = 0
    phases: set[str] = field(default_factory=set)


def _cause(entry: dict[str, Any]) -> str:
    """The exception's last line and the innermost payhub frame of a logged traceback."""
    text = str(entry.get("exception") or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return str(entry.get("event", ""))
    frames = [
        line
        for line in lines
        if line.startswith("File ") and re.search(r"/(gateway|connectors|crypto|risk|config)/", line)
    ]
    where = ""
    if frames:
        match = re.search(
            r'File "[^"]*/((?:gateway|connectors|crypto|risk|config)/[^"]+)", line (\d+), in (\S+)',
            frames[-1],
        )
        where = f" at {match[1]}:{match[2]} in {match[3]}" if match else ""
    return f"{lines[-1][:200]}{where}"


def _param(response: Response) -> str:
    try:
        error = orjson.loads(response.content)["error"]
        return f"{error.get('param')}: {error.get('code')}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "?"


def server_errors(log: Path) -> dict[str, str]:
    """request_id → cause, for every error the gateway logged with a traceback."""
    causes: dict[str, str] = {}
    if not log.exists():
        return causes
    for line in log.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        request_id = entry.get("request_id")
        if (
            isinstance(entry, dict)
            and request_id
            and (entry.get("exception") or entry.get("level") == "error")
        ):
            causes.setdefault(str(request_id), _cause(entry))
    return causes


class FuzzReport:
    """Thread-safe: the state machine and the per-operation runs may share one report."""

    def __init__(
        self,
        name: str,
        cert: tuple[str, str],
        ca: str,
        cert_for: Callable[[Case], tuple[str, str]] | None = None,
    ) -> None:
        self.name = name
        self._cert = cert
        self._cert_for = cert_for  # the certificate a case was sent with (operator routes: ops)
        self._ca = ca
        self._lock = threading.Lock()
        self.cases: Counter[str] = Counter()  # by phase
        self.modes: Counter[str] = Counter()  # positive / negative
        self.statuses: Counter[int] = Counter()
        self.operations: set[str] = set()
        self.transport_errors: Counter[str] = Counter()
        self.observed: list[Observed] = []
        # Valid by the document, refused by the server: a rule the document does not state yet.
        self.refused_positive: Counter[tuple[str, str]] = Counter()
        self.seed: int | None = None
        self.forbidden: Counter[str] = Counter()  # 403s by operation (roles: expected on none)

    def curl(self, case: Case, response: Response | None) -> str:
        headers = dict(response.request.headers) if response is not None else None
        command = case.as_curl_command(headers=headers)
        # The gateway asks for a client certificate: a reproducer without one fails the handshake.
        pair = self._cert_for(case) if self._cert_for is not None else self._cert
        cert, key = (shlex.quote(path) for path in pair)
        tls = f"--cert {cert} --key {key} --cacert {shlex.quote(self._ca)}"
        return command.replace("curl ", f"curl {tls} ", 1)

    def count(self, phase: str, case: Case, response: Response | None) -> None:
        with self._lock:
            self.cases[phase] += 1
            self.operations.add(case.operation.label)
            meta = case.meta
            if meta is not None:
                self.modes[meta.generation.mode.value] += 1
            if response is not None:
                self.statuses[response.status_code] += 1
                if response.status_code == 403:
                    self.forbidden[case.operation.label] += 1
                if response.status_code == 400 and meta is not None and not meta.generation.mode.is_negative:
                    self.refused_positive[(case.operation.label, _param(response))] += 1

    def transport_error(self, phase: str, case: Case, exc: Exception) -> None:
        title = f"{type(exc).__name__}: {str(exc)[:160]}"
        with self._lock:
            self.transport_errors[title] += 1
            self.observed.append(
                Observed(
                    phase, case.operation.label, "transport", title, None, None, self.curl(case, None), ""
                )
            )

    def failure(self, phase: str, case: Case, response: Response, check: str, failure: Failure) -> None:
        request_id = next(
            (v[0] for k, v in response.headers.items() if k.lower() == "request-id" and v), None
        )
        answer = response.content.decode("utf-8", "replace")[:BODY_EXCERPT]
        observed = Observed(
            phase,
            case.operation.label,
            check,
            failure.title,
            response.status_code,
            request_id,
            self.curl(case, response),
            answer,
        )
        with self._lock:
            self.observed.append(observed)

    def findings(self, causes: dict[str, str]) -> list[Finding]:
        grouped: dict[tuple[str, str, str, int | None, str], Finding] = {}
        for seen in self.observed:
            cause = causes.get(seen.request_id or "", "") if (seen.status or 0) >= 500 else ""
            key = (seen.operation, seen.check, seen.title, seen.status, cause)
            finding = grouped.get(key)
            if finding is None:
                finding = grouped[key] = Finding(
                    seen.operation, seen.check, seen.title, seen.status, cause, seen
                )
            finding.count += 1
            finding.phases.add(seen.phase)
            if len(seen.curl) < len(finding.example.curl):
                finding.example = seen
        return sorted(grouped.values(), key=lambda f: (f.check, f.operation, f.status or 0, f.title))

    def summary(self, findings: list[Finding]) -> str:
        by_check = Counter(f.check for f in findings)
        occurrences: Counter[str] = Counter()
        for f in findings:
            occurrences[f.check] += f.count
        lines = [
            f"== schemathesis {self.name}: {sum(self.cases.values())} cases "
            f"({', '.join(f'{phase} {n}' for phase, n in sorted(self.cases.items()))}; "
            f"{', '.join(f'{mode} {n}' for mode, n in sorted(self.modes.items()))}) "
            f"over {len(self.operations)} operations, seed {self.seed}",
            "   statuses: " + ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items())),
            "   403 by operation: "
            + (", ".join(f"{op}: {n}" for op, n in self.forbidden.most_common(6)) or "none"),
            f"   failures: {len(findings)} distinct"
            + (
                " — "
                + ", ".join(
                    f"{check} {by_check[check]} ({occurrences[check]} cases)" for check in sorted(by_check)
                )
                if findings
                else ""
            ),
        ]
        if self.refused_positive:
            top = ", ".join(
                f"{operation} {param}: {n}" for (operation, param), n in self.refused_positive.most_common(8)
            )
            lines.append(
                f"   valid by the document but refused (400): {sum(self.refused_positive.values())} — {top}"
            )
        return "\n".join(lines)

    def details(self, findings: list[Finding]) -> str:
        blocks = []
        for number, f in enumerate(findings[:MAX_LISTED], 1):
            status = f" → {f.status}" if f.status is not None else ""
            phases = ", ".join(sorted(f.phases))
            block = [f"[{number}] {f.operation} · {f.check} · {f.title}{status} · {f.count} cases ({phases})"]
            if f.cause:
                block.append(f"    cause: {f.cause}")
            block.append(f"    reproduce: {f.example.curl}")
            if f.example.answer:
                block.append(f"    answer: {f.example.answer}")
            blocks.append("\n".join(block))
        if len(findings) > MAX_LISTED:
            blocks.append(f"... and {len(findings) - MAX_LISTED} more distinct failures")
        return "\n\n".join(blocks)
