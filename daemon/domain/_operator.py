"""Operator commands on one account: reset, exclude, mark resolved."""

from __future__ import annotations

from datetime import datetime

from . import events as ev
from . import inputs as inp
from ._builder import Action
from ._builder import Builder as _Builder
from .vocabulary import MIGRATING, OperatorCommand


def on_operator(
    b: _Builder, at: datetime, c: inp.ResetAccount | inp.ExcludeAccount | inp.MarkResolved
) -> None:
    """Record an operator command on the account, then carry it out where it applies."""
    s = b.state
    action: Action = None
    command: OperatorCommand
    if isinstance(c, inp.ResetAccount):
        command = "reset"
        if s.state == "dynamic" and not (s.flags or s.pending_timers or s.pending_effects):
            reason = "account already dynamic with nothing pending"
        else:
            reason = "migration progress forgotten; back to dynamic"
            action = _reset
    elif isinstance(c, inp.ExcludeAccount):
        command = "exclude"
        if s.state == "excluded":
            reason = "account already excluded"
        else:
            reason = "account taken out of the migration"
            action = _exclude
    else:
        command = "mark_resolved"
        reason, action = _resolution(b, at)
    b.emit(
        ev.OperatorCommandRecorded(
            account_id=b.id,
            occurred_at=b.at,
            command=command,
            actor=c.actor,
            operator_reason=c.reason,
            reason=reason,
        )
    )
    if action is not None:
        action(b)


def _reset(b: _Builder) -> None:
    b.cancel_timers("reset by the operator")
    b.abandon_effects("reset by the operator")
    b.clear_flags("reset by the operator")
    if b.state.state != "dynamic":
        b.move("dynamic", b.at, "reset by the operator")


def _exclude(b: _Builder) -> None:
    b.cancel_timers("excluded by the operator")
    b.abandon_effects("excluded by the operator")
    b.move("excluded", b.at, "excluded by the operator")


def _resolution(b: _Builder, at: datetime) -> tuple[str, Action]:
    s = b.state
    if s.state in MIGRATING:
        if at < b.first_auth_at + b.settings.delay:
            return "refused: the delay since the first auth has not passed", None

        def resolve(b: _Builder) -> None:
            b.cancel_timers("resolved by the operator")
            b.abandon_effects("resolved by the operator")
            b.clear_flags("resolved by the operator")
            b.move("static", at, "second step confirmed by the operator")

        return "second step confirmed by the operator; account static", resolve
    if s.flags:

        def clear(b: _Builder) -> None:
            b.clear_flags("resolved by the operator")

        return "flags cleared by the operator", clear
    return f"nothing to resolve in state {s.state}", None
