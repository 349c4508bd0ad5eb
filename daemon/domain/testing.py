"""A pure in-memory stand-in for the daemon loop: dedupe, decide, append, evolve.

For the tests and the benchmarks only (no module of daemon/ imports it; a test says so): it
drives the domain with inputs and gives the log the daemon would write. Appends are what the
daemon does: the events of one input get the ids `event_id(input_id, i)`, an input whose first
event id exists is a redelivery and is skipped.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from .application import decide, evolve_stream
from .codec import stream_of
from .events import Event
from .inputs import AccountInput, Input, stream_for
from .settings import MigrationSettings
from .state import AccountState, ApplicationState
from .streams import event_id, first_event_id


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
        if first_event_id(command.input_id) in self.event_ids:
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
            self._append(stream, event_id(command.input_id, i), event)
        return new

    def account(self, account_id: str) -> AccountState | None:
        return self.accounts.get(account_id)

    def put_account(self, state: AccountState) -> None:
        self.accounts[state.account_id] = state

    def _append(self, stream: str, id_: str, event: Event) -> None:
        version = evolve_stream(self, stream, event)
        self.event_ids.add(id_)
        self.log.append(LoggedEvent(len(self.log) + 1, stream, version, id_, event))
