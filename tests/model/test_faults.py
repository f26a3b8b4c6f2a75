"""One short, deterministic scenario per fault class of the world outside (issue #16), on one shared
world (one stack, one PostgreSQL cluster for the module): a burst of mixed requests, the fault started
during it, held, ended, every unanswered request retried with its same key and body; then quiescence
and the full conservation checks against the simulators' books. Each test asserts that no new
violation appeared and that every payment the fault touched was final or waiting on a documented
external step within ``RECOVERY_BOUND`` seconds of the fault's end. The per-class table is printed at
the end of the module (``-s``) and written to the module's workdir as ``faults.json``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.model import checks, faults
from tests.model import requests as rq
from tests.model.actions import Actions, Profile, World, open_world

PROFILE = Profile(examples=1, steps=0, crashes_per_example=0, max_crashes=0, quiesce=60.0)
# Mixed kinds, each in flight during the fault: card (approved, and one the acquirer never answers),
# a bank transfer, a refund, a card top-up, bills by card and bank, a late posting, a balance payment.
BURST = [
    "card", "timeout_card", "bank", "refund", "topup_card", "bill_card", "bill_bank", "bill_late", "balance",
]  # fmt: skip
# Held long enough to bite: past the links' read time-outs for the spike, a few polls for restarts.
HOLD = {
    "gateway_kill": 0.0,
    "postgres_restart": 2.0,
    "simulator_restart_kept": 2.0,
    "biller_restart_lost": 2.0,
    "latency_spike": 3.0,
    "reset_before_write": 1.5,
    "reset_after_write": 1.5,
    "late_callbacks": 2.0,
}
PICK = {"simulator_restart_kept": 0, "latency_spike": 2, "reset_before_write": 3, "reset_after_write": 3}
# Seconds from a fault's end until every payment it touched is final or waiting. A fault that leaves an
# attempt unknown waits for the resolver's rechecks (back-off 1, 5, 15, 30 s): three of them fit.
RECOVERY_BOUND = 60.0


class Scenario(Actions):
    world: ClassVar[World]


@pytest.fixture(scope="module")
def world(payhub_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("faults")
    with open_world(payhub_home, workdir, PROFILE) as opened:
        yield opened
        owned = faults.owners(opened.applications, opened.hub) if opened.hub is not None else {}
        rows = faults.figures(opened.applications, opened.violations.values(), owned, opened.history)
        print("\n" + faults.table(rows))
        faults.write_json(workdir / "faults.json", rows, opened.applications)
        opened.history.dump(workdir / "history.jsonl")


@pytest.fixture(scope="module")
def scenario(world: World) -> Scenario:
    """What the bursts draw on: funded balances, card payments to refund, settled bank and wallet
    payments (the late callbacks' targets)."""
    made: Scenario = type("BoundScenario", (Scenario,), {"world": world})()
    for account in made.do_open_account() + made.do_open_account():
        made.do_top_up(account, 30_000, "card")
    made.do_card(rq.APPROVED, 5_000)
    made.do_bank("1111", 3_000)  # settled by callback
    made.do_bank("0005", 2_000)  # settled by a poll only
    made.do_wallet("alipay", "pay_now", 4_000)
    found = made.check_all()
    assert not found, checks.report(found, world.history)
    return made


@pytest.mark.parametrize("kind", faults.FAULT_CLASSES)
def test_fault(scenario: Scenario, kind: str) -> None:
    world = scenario.world
    scenario.rnd = random.Random(faults.FAULT_CLASSES.index(kind))
    scenario.answers = []
    card = next(p for p in scenario.payment_ids if scenario.notes[p].kind == "card")
    if kind == "gateway_kill":
        scenario.crash_with(BURST, 300, card)
    else:
        hold, pick = HOLD[kind], PICK.get(kind, 0)
        scenario.apply_fault(kind, BURST, card, burst_ms=800, lead_ms=300, hold=hold, pick=pick)
    app = world.applications[-1]
    seen = set(world.violations)
    scenario.check_all()
    new = [v for key, v in world.violations.items() if key not in seen]
    assert not new, f"{kind} ({app.detail}):\n" + checks.report(new, world.history)
    assert app.recovery is not None and app.recovery <= RECOVERY_BOUND, (
        f"{kind} ({app.detail}): payments {sorted(app.payments)} not final or waiting "
        f"{RECOVERY_BOUND} s after the fault (recovery {app.recovery})"
    )
