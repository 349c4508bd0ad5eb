"""`decide` for the application stream (enablement, enrolment, IP lists), and the dispatchers.

`decide(state, input, now, settings, app)` routes to the account or the application function
by the input's kind, so the daemon can treat every stream alike: load the stream's state,
decide, append at `state.version`, evolve. `evolve_stream(states, stream, event)` is the one
router from an event to its evolve, for whoever keeps every stream's state (the projection,
the engine's pass, the test harness): the stream says which evolve.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from . import events as ev
from . import inputs as inp
from .decide import decide_account
from .settings import MigrationSettings
from .state import AccountState, ApplicationState, evolve_account, evolve_application
from .streams import account_of


def decide_application(
    state: ApplicationState | None,
    command: inp.ApplicationInput,
    now: datetime,
    settings: MigrationSettings,
) -> list[ev.Event]:
    """The events recording an application-wide input and its consequences."""
    del now  # application inputs carry their own times; kept for a uniform signature
    state = state or ApplicationState()
    match command:
        case inp.EnableMigration():
            # MigrationEnabled sets `enabled_at` with `migration_enabled`: the time says both.
            if state.enabled_at is not None:
                return [
                    ev.ApplicationCommandNoted(
                        occurred_at=command.occurred_at,
                        command="enable_migration",
                        actor=command.actor,
                        reason=f"already enabled since {state.enabled_at.isoformat()}",
                    )
                ]
            return [
                ev.MigrationEnabled(
                    occurred_at=command.occurred_at,
                    actor=command.actor,
                    reason=command.reason or "enabled by the operator",
                )
            ]
        case inp.Enroll():
            return [_enroll(state, command, settings)]
        case inp.IpListObserved():
            return [_ip_list(state, command)]
        case _:
            raise TypeError(f"not an application input: {type(command).__name__}")


def _enroll(state: ApplicationState, c: inp.Enroll, settings: MigrationSettings) -> ev.Event:
    policy = c.policy or settings.default_policy
    account_ids = tuple(dict.fromkeys(c.account_ids))  # keep order, drop repeats
    unchanged = all(
        (e := state.enrollments.get(a)) is not None and (e.wave, e.policy) == (c.wave, policy)
        for a in account_ids
    )
    if not account_ids or unchanged:
        why = "no accounts given" if not account_ids else "already enrolled with this wave/policy"
        return ev.ApplicationCommandNoted(
            occurred_at=c.occurred_at, command="enroll", actor=c.actor, reason=why
        )
    return ev.AccountsEnrolled(
        occurred_at=c.occurred_at,
        account_ids=account_ids,
        wave=c.wave,
        policy=policy,
        actor=c.actor,
        reason=c.reason or f"enrolled in wave {c.wave}",
    )


def _ip_list(state: ApplicationState, o: inp.IpListObserved) -> ev.Event:
    current = state.ip_lists.get(o.kind)
    old = set(current.addresses) if current else set()
    new = set(o.addresses)
    if current is not None and old == new:
        return ev.IpListUnchanged(
            occurred_at=o.observed_at,
            kind=o.kind,
            provider_updated_at=o.provider_updated_at,
            reason="same addresses as the last observation",
        )
    return ev.IpListChanged(
        occurred_at=o.observed_at,
        kind=o.kind,
        addresses=tuple(sorted(new)),
        added=tuple(sorted(new - old)),
        removed=tuple(sorted(old - new)),
        provider_updated_at=o.provider_updated_at,
    )


def decide(
    state: AccountState | ApplicationState | None,
    command: inp.Input,
    now: datetime,
    settings: MigrationSettings,
    app: ApplicationState | None = None,
) -> list[ev.Event]:
    """Route to `decide_account` or `decide_application`; `app` is needed for account inputs."""
    if isinstance(command, inp.AccountInput):
        if state is not None and not isinstance(state, AccountState):
            raise TypeError("an account input needs the account's state")
        return decide_account(state, command, now, settings, app or ApplicationState())
    if state is not None and not isinstance(state, ApplicationState):
        raise TypeError("an application input needs the application state")
    # Not an AccountInput, so an ApplicationInput: mypy cannot narrow to the other subclass.
    return decide_application(state, command, now, settings)  # type: ignore[arg-type]


class StreamStates(Protocol):
    """Whoever keeps the state of every stream: the application's, and each account's by id."""

    application: ApplicationState

    def account(self, account_id: str) -> AccountState | None: ...

    def put_account(self, state: AccountState) -> None: ...


def evolve_stream(states: StreamStates, stream: str, event: ev.Event) -> int:
    """Fold `event`, recorded in `stream`, into the state `states` keeps for that stream.

    Returns the stream's new version. The stream (known to every caller: it was computed to
    append the event, or read with it) is the whole routing: no test of the event's class.
    """
    account_id = account_of(stream)
    if account_id is None:
        app = states.application = evolve_application(states.application, event)
        return app.version
    state = evolve_account(states.account(account_id), event)
    states.put_account(state)
    return state.version
