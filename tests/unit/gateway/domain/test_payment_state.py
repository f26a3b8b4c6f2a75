from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.payment_state import (
    CANCELABLE,
    CAPTURABLE,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Status,
    require,
    transition,
)


def test_every_status_has_a_row_and_terminal_statuses_are_final() -> None:
    assert set(TRANSITIONS) == set(Status)
    for status in TERMINAL:
        assert TRANSITIONS[status] == frozenset()


def test_new_is_never_a_target() -> None:
    assert all(Status.NEW not in targets for targets in TRANSITIONS.values())


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (Status.NEW, Status.SUCCEEDED),
        (Status.NEW, Status.REQUIRES_ACTION),
        (Status.REQUIRES_ACTION, Status.PROCESSING),
        (Status.PROCESSING, Status.FAILED),
        (Status.PROCESSING, Status.REQUIRES_CAPTURE),
        (Status.REQUIRES_CAPTURE, Status.SUCCEEDED),
        (Status.REQUIRES_CAPTURE, Status.CANCELED),
        (Status.UNDER_REVIEW, Status.SUCCEEDED),
        (Status.PROCESSING, Status.CANCELED),  # a cancel whose void the connector confirmed
    ],
)
def test_legal(current: Status, target: Status) -> None:
    assert transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (Status.SUCCEEDED, Status.FAILED),
        (Status.FAILED, Status.SUCCEEDED),
        (Status.CANCELED, Status.PROCESSING),
        (Status.PROCESSING, Status.UNDER_REVIEW),
        (Status.REQUIRES_CAPTURE, Status.REQUIRES_ACTION),
    ],
)
def test_illegal(current: Status, target: Status) -> None:
    with pytest.raises(IllegalTransition, match=str(current)):
        transition(current, target)


@given(st.lists(st.sampled_from(list(Status)), max_size=20))
def test_any_walk_of_legal_moves_never_leaves_a_terminal_status(moves: list[Status]) -> None:
    current = Status.NEW
    for target in moves:
        try:
            current = transition(current, target)
        except IllegalTransition:
            assert target not in TRANSITIONS[current]
    if current in TERMINAL:
        assert all(transition_is_refused(current, s) for s in Status)


def transition_is_refused(current: Status, target: Status) -> bool:
    try:
        transition(current, target)
    except IllegalTransition:
        return True
    return False


def test_action_guards() -> None:
    require(Status.REQUIRES_CAPTURE, CAPTURABLE, "capture")
    with pytest.raises(IllegalTransition):
        require(Status.SUCCEEDED, CANCELABLE, "cancel")
