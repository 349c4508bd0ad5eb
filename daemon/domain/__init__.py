"""The pure migration domain: inputs, events, `decide` and `evolve`, settings.

Imports only the standard library, msgspec and immutables: no I/O, no clock reads, no
randomness; `now` is always an argument. The contract with the daemon:

- `stream_for(input)` names the stream; load its state (`None` if unseen) and call
  `decide(state, input, now, settings, app)`. It returns at least one event, the first
  recording the input; name them `event_id(input.input_id, i)` and append them in one transaction
  at expected version `state.version` (0 for an unseen stream).
- `encode_event(e)` / `decode_event(type, schema, data)` convert to and from the store's
  (type, schema, JSON bytes); `stream_of(e)` is the event's stream.
- `evolve_stream(states, stream, event)` folds an event into its stream's state
  (`evolve_account` / `evolve_application`); `AccountState` keeps the pending timers and
  effects, so the timer driver and outbox are rebuilt from it alone.

The vocabulary (states, flags, timer purposes, ...) is typed in `vocabulary.py`; every move
between states is in the table of `transitions.py`, checked as each move is made. `TimerFired`
is the event; the timer driver's input is `TimerDue`.
"""

from . import events, inputs
from .application import StreamStates, decide, decide_application, evolve_stream
from .codec import (
    EVENT_TYPES,
    UPCASTERS,
    EncodedEvent,
    decode_event,
    encode_event,
    stream_of,
)
from .decide import decide_account
from .enrollments import Enrollment
from .events import (
    AccountEvent,
    AccountObservationRecorded,
    AccountsEnrolled,
    ApplicationCommandNoted,
    ApplicationEvent,
    AppNotified,
    AuthRecorded,
    EffectAbandoned,
    EffectAttemptFailed,
    EffectEvent,
    EffectOutcomeIgnored,
    EffectProgressed,
    EffectRequested,
    EffectSucceeded,
    Event,
    FlagCleared,
    FlagRaised,
    InputQuarantined,
    IpListChanged,
    IpListUnchanged,
    MigrationEnabled,
    OperatorCommandRecorded,
    ProviderCheckRequested,
    ProviderNotificationRecorded,
    ReauthRequested,
    StateChanged,
    SyncRestartRequested,
    TimerCancelled,
    TimerFired,
    TimerFiringIgnored,
    TimerScheduled,
    UnknownEvent,
)
from .inputs import (
    AccountInput,
    AccountObserved,
    ApplicationInput,
    AuthReported,
    EffectOutcome,
    EnableMigration,
    Enroll,
    ExcludeAccount,
    Input,
    IpListObserved,
    MarkResolved,
    ProviderNotified,
    ResetAccount,
    TimerDue,
    stream_for,
)
from .settings import MigrationSettings
from .state import (
    AccountState,
    ApplicationState,
    KnownIpList,
    PendingEffect,
    evolve_account,
    evolve_application,
)
from .streams import (
    APPLICATION_STREAM,
    account_of,
    account_stream,
    event_id,
    first_event_id,
    is_input_record,
)
from .transitions import TRANSITIONS, InputKind, Transition, TransitionError
from .triggers import TRIGGERS, meaning_of, sync_state_meaning
from .vocabulary import (
    FLAGS,
    STATES,
    TIMER_PURPOSES,
    AuthClassification,
    Flag,
    Meaning,
    Policy,
    State,
    TimerPurpose,
)

__all__ = [
    "APPLICATION_STREAM",
    "EVENT_TYPES",
    "FLAGS",
    "STATES",
    "TIMER_PURPOSES",
    "TRANSITIONS",
    "TRIGGERS",
    "UPCASTERS",
    "AccountEvent",
    "AccountInput",
    "AccountObservationRecorded",
    "AccountObserved",
    "AccountState",
    "AccountsEnrolled",
    "AppNotified",
    "ApplicationCommandNoted",
    "ApplicationEvent",
    "ApplicationInput",
    "ApplicationState",
    "AuthClassification",
    "AuthRecorded",
    "AuthReported",
    "EffectAbandoned",
    "EffectAttemptFailed",
    "EffectEvent",
    "EffectOutcome",
    "EffectOutcomeIgnored",
    "EffectProgressed",
    "EffectRequested",
    "EffectSucceeded",
    "EnableMigration",
    "EncodedEvent",
    "Enroll",
    "Enrollment",
    "Event",
    "ExcludeAccount",
    "Flag",
    "FlagCleared",
    "FlagRaised",
    "Input",
    "InputKind",
    "InputQuarantined",
    "IpListChanged",
    "IpListObserved",
    "IpListUnchanged",
    "KnownIpList",
    "MarkResolved",
    "Meaning",
    "MigrationEnabled",
    "MigrationSettings",
    "OperatorCommandRecorded",
    "PendingEffect",
    "Policy",
    "ProviderCheckRequested",
    "ProviderNotificationRecorded",
    "ProviderNotified",
    "ReauthRequested",
    "ResetAccount",
    "State",
    "StateChanged",
    "StreamStates",
    "SyncRestartRequested",
    "TimerCancelled",
    "TimerDue",
    "TimerFired",
    "TimerFiringIgnored",
    "TimerPurpose",
    "TimerScheduled",
    "Transition",
    "TransitionError",
    "UnknownEvent",
    "account_of",
    "account_stream",
    "decide",
    "decide_account",
    "decide_application",
    "decode_event",
    "encode_event",
    "event_id",
    "events",
    "evolve_account",
    "evolve_application",
    "evolve_stream",
    "first_event_id",
    "inputs",
    "is_input_record",
    "meaning_of",
    "stream_for",
    "stream_of",
    "sync_state_meaning",
]
