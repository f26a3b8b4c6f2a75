"""CPU accounting for ``make bench``: who spent how many CPU seconds during a measured run.

Every figure comes from ``/proc/<pid>/stat`` (utime + stime, plus cutime + cstime: the CPU of
children the process has already reaped). A *group* is a set of root processes and all their live
descendants, so ``payhub serve --workers 2`` (a parent and two spawned workers) is one group, and a
PostgreSQL backend that exits between two samples is still counted: its CPU moves into the
postmaster's cutime when the postmaster reaps it. Sampling the same group before and after a run
therefore gives the exact CPU spent in between, whatever processes came and went.

Also here: which cores the server under test and the load generator get (:func:`plan_cores`) and a
way to start a child already pinned (:func:`pinned`), so that its threads and workers inherit it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    ticks: int  # utime + stime + cutime + cstime, in clock ticks


def read_stat(pid: int) -> ProcStat | None:
    """One process's line of /proc/<pid>/stat, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may itself hold spaces or parentheses: split after the last ')'.
    head, _, rest = text.rpartition(")")
    comm = head.partition("(")[2]
    fields = rest.split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return ProcStat(pid, int(fields[1]), comm, utime + stime + cutime + cstime)


def snapshot() -> dict[int, ProcStat]:
    """Every process on the machine (those visible in /proc)."""
    stats: dict[int, ProcStat] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := read_stat(int(entry.name))) is not None:
            stats[stat.pid] = stat
    return stats


def tree(roots: Iterable[int], stats: Mapping[int, ProcStat]) -> set[int]:
    """The roots that are alive and all their live descendants."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in stats]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def is_postgres(pid: int) -> bool:
    """comm or argv[0] names postgres (a postmaster, a backend or a background process)."""
    stat = read_stat(pid)
    if stat is not None and stat.comm in ("postgres", "postmaster"):
        return True
    try:
        argv0 = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return argv0.endswith((b"/postgres", b"postgres")) or argv0.startswith(b"postgres:")


@dataclass
class Group:
    """What one column of the table counts: root pids and their descendants, or every postgres."""

    name: str
    roots: list[int] = field(default_factory=list)
    every_postgres: bool = False  # fallback when the postmaster is not known

    def ticks(self, stats: Mapping[int, ProcStat]) -> int:
        if self.every_postgres:
            pids: Iterable[int] = [pid for pid in stats if is_postgres(pid)]
        else:
            pids = tree(self.roots, stats)
        return sum(stats[pid].ticks for pid in pids if pid in stats)


def sample(groups: Iterable[Group]) -> dict[str, float]:
    """CPU seconds so far of each group (one /proc scan for all of them)."""
    stats = snapshot()
    return {group.name: group.ticks(stats) / CLOCK_TICKS for group in groups}


def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}


def postmaster_of(backend_pid: int) -> int | None:
    """The postmaster of a backend (its parent), when that backend runs on this machine."""
    stat = read_stat(backend_pid)
    if stat is None or not is_postgres(backend_pid):
        return None
    return stat.ppid if is_postgres(stat.ppid) else None


# ---- cores ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorePlan:
    server: frozenset[int] | None  # cores of the server under test (None: not pinned)
    generator: frozenset[int] | None  # cores of the load generator and of the bench itself
    note: str


def plan_cores(nproc: int, workers: int) -> CorePlan:
    """Server on CPU 1 (and up, one per worker), load generator on CPU 0; PostgreSQL and simulators float."""
    if nproc < 2:
        return CorePlan(None, None, f"pinning off: {nproc} core")
    if workers >= nproc:
        return CorePlan(
            None,
            None,
            f"pinning off: {workers} gateway workers use all {nproc} cores, "
            "and share them with the load generator, PostgreSQL and the simulators",
        )
    server = frozenset(range(1, workers + 1))
    cpus = ",".join(str(core) for core in sorted(server))
    return CorePlan(
        server,
        frozenset({0}),
        f"server under test pinned to CPU {cpus}, load generator to CPU 0; "
        "PostgreSQL and the simulators float",
    )


TRAMPOLINE = (
    "import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')}); "
    "os.execv(sys.executable, [sys.executable, '-m', *sys.argv[2:]])"
)


def pinned(module_args: list[str], cores: frozenset[int] | None) -> list[str]:
    """argv running ``python -m <module_args>`` on ``cores``: set before exec, so every thread and
    every worker process it spawns inherits it; the pid is the one ``Popen`` returns."""
    if cores is None or not hasattr(os, "sched_setaffinity"):
        return [sys.executable, "-m", *module_args]
    return [sys.executable, "-c", TRAMPOLINE, ",".join(map(str, sorted(cores))), *module_args]


# The cores this process may use before anything is pinned: what floating children get.
ALL_CORES = frozenset(
    os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
)
