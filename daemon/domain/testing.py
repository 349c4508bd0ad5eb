"""A pure in-memory stand-in for the daemon loop: dedupe, decide, append, evolve.

Used by the tests (and reusable by the daemon's tests) to drive the domain with inputs and get
the log it would write. Appends are what the daemon does: the events of one input get the ids
`f"{input_id}#{i}"`, an input whose `#0` exists is a redelivery and is skipped.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from .application import decide
from .codec import stream_of
from .events import APPLICATION_STREAM, Event
from .inputs import AccountInput, Input, stream_for
from .settings import MigrationSettings
from .state import AccountState, ApplicationState, evolve_account, evolve_application


class LoggedEvent(msgspec.Struct, frozen=True):
    """One appended event with its place in the log."""

    position: int
    stream: str
    version: int
    event_id: str
    event: Event


class Harness:
    """The log and the stream states of one in-memory run."""

    def __init__(self, settings: MigrationSettings | None = None) -> None:
        self.settings = settings or MigrationSettings()
        self.log: list[LoggedEvent] = []
        self.event_ids: set[str] = set()
        self.accounts: dict[str, AccountState] = {}
        self.application = ApplicationState()

    def handle(self, command: Input, now: datetime) -> list[Event]:
        """Decide and append `command`'s events; [] if it is a redelivery."""
        if f"{command.input_id}#0" in self.event_ids:
            return []
        stream = stream_for(command)
        state: AccountState | ApplicationState | None
        if isinstance(command, AccountInput):
            state = self.accounts.get(command.account_id)
        else:
            state = self.application
        new = decide(state, command, now, self.settings, self.application)
        if not new:
            raise AssertionError(f"{type(command).__name__} produced no event")
        for i, event in enumerate(new):
            if stream_of(event) != stream:
                raise AssertionError(f"{type(event).__name__} is not for stream {stream}")
            self._append(f"{command.input_id}#{i}", event)
        return new

    def _append(self, event_id: str, event: Event) -> None:
        stream = stream_of(event)
        if stream == APPLICATION_STREAM:
            self.application = evolve_application(self.application, event)
            version = self.application.version
        else:
            account_id = stream.removeprefix("account-")
            state = evolve_account(self.accounts.get(account_id), event)
            self.accounts[account_id] = state
            version = state.version
        self.event_ids.add(event_id)
        self.log.append(LoggedEvent(len(self.log) + 1, stream, version, event_id, event))
