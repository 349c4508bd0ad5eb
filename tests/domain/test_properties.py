"""Property tests: for any input sequence the migration rules and the read model hold."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_case
from hypothesis import strategies as st

from daemon.domain import (
    APPLICATION_STREAM,
    AccountObserved,
    AccountsEnrolled,
    AccountState,
    ApplicationState,
    AuthReported,
    EffectOutcome,
    EffectRequested,
    EnableMigration,
    Enroll,
    ExcludeAccount,
    MarkResolved,
    MigrationSettings,
    ProviderNotified,
    ResetAccount,
    StateChanged,
    TimerDue,
    TimerFired,
    TimerScheduled,
    evolve_account,
    evolve_stream,
    first_event_id,
)
from daemon.domain.state import evolve_application
from daemon.domain.testing import Harness
from daemon.runtime.projections import Projection

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SETTINGS = MigrationSettings(
    delay=timedelta(minutes=30),
    reminder_schedule=(timedelta(minutes=60), timedelta(minutes=120)),
    stall_after=timedelta(minutes=60),
    stop_grace=timedelta(minutes=10),
)
ACCOUNTS = ("a", "b")
WAITING = ("first_auth", "stopped_waiting", "second_step_due", "second_auth")
TRIGGERS = (
    (2, "account.stopped"),
    (2, "account.running"),
    (2, "account.connected"),
    (2, "account.invalid"),
    (2, "account.sync_error"),
    (3, "grant.updated"),
    (3, "grant.deleted"),
    (2, "account.whatever"),
)

account = st.sampled_from(ACCOUNTS)
minutes = st.integers(min_value=0, max_value=90)
skew = st.integers(min_value=0, max_value=40)  # how late an input is delivered
step = st.one_of(
    st.tuples(st.just("auth"), account, minutes, skew),
    st.tuples(st.just("hook"), account, minutes, skew, st.sampled_from(TRIGGERS)),
    st.tuples(
        st.just("observe"),
        account,
        minutes,
        skew,
        st.sampled_from(["stopped", "running", "invalid", "sync-error", None, "gone"]),
    ),
    st.tuples(st.just("fire"), account, minutes, st.integers(0, 5)),
    st.tuples(
        st.just("outcome"),
        account,
        minutes,
        st.integers(0, 5),
        st.sampled_from(["succeeded", "progressed", "failed_retrying", "gave_up"]),
    ),
    st.tuples(st.just("op"), account, st.sampled_from(["reset", "exclude", "resolve"])),
    st.tuples(st.just("redeliver"), st.integers(0, 50)),
    st.tuples(
        st.just("restart"),
    ),
    # A whole happy path with random gaps, so runs often get far amid the noise.
    st.tuples(st.just("journey"), account, st.lists(st.integers(0, 45), min_size=4, max_size=4)),
    st.tuples(st.just("neglect"), account),
    # The provider ignores the second step: the running grace passes and it reports `stopped`.
    st.tuples(st.just("ignored"), account),
    st.tuples(st.just("retried"), account, st.lists(st.integers(0, 45), min_size=4, max_size=4)),
    st.tuples(st.just("auth"), account, st.integers(5, 25), st.just(0)),
)


class Run:
    """One generated run: the harness, a live projection, and the inputs given so far."""

    def __init__(self, policy: str) -> None:
        self.h = Harness(SETTINGS)
        self.live = Projection(hot_limit=1)  # every state but one kept encoded
        self.now = T0
        self.given: list = []
        self.n = 0
        self.fired: set[str] = set()
        self.give(EnableMigration(input_id="enable", occurred_at=T0, actor="op"))
        self.give(
            Enroll(
                input_id="enroll",
                occurred_at=T0,
                account_ids=ACCOUNTS,
                wave="w",
                policy=policy,  # type: ignore[arg-type]
                actor="op",
            )
        )

    def give(self, inp) -> None:
        self.given.append(inp)
        before = len(self.h.log)
        self.h.handle(inp, self.now)
        for logged in self.h.log[before:]:
            self.live.apply(logged.position, logged.event)

    def uid(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"

    def state(self, account_id: str) -> AccountState:
        return self.h.accounts.get(account_id) or AccountState(account_id=account_id)

    def step(self, s: tuple) -> None:
        kind = s[0]
        if kind in ("auth", "hook", "observe", "fire", "outcome"):
            self.now += timedelta(minutes=s[2])
        if kind == "auth":
            at = self.now - timedelta(minutes=s[3])
            self.give(AuthReported(input_id=self.uid("auth"), account_id=s[1], occurred_at=at))
        elif kind == "hook":
            at = self.now - timedelta(minutes=s[3])
            version, trigger = s[4]
            self.give(
                ProviderNotified(
                    input_id=self.uid("hook"),
                    account_id=s[1],
                    trigger=trigger,
                    occurred_at=at,
                    api_version=version,
                    details={"code": 25027} if trigger == "grant.updated" else {},
                )
            )
        elif kind == "observe":
            at = self.now - timedelta(minutes=s[3])
            sync = s[4]
            self.give(
                AccountObserved(
                    input_id=self.uid("obs"),
                    account_id=s[1],
                    sync_state=None if sync == "gone" else sync,
                    exists=sync != "gone",
                    observed_at=at,
                )
            )
        elif kind == "fire":
            state = self.state(s[1])
            # Fire a due pending timer, or re-fire one that already closed.
            due = sorted((d, t) for t, d in state.pending_timers.items() if d <= self.now)
            choices = [t for _, t in due] + sorted(state.closed_timers)
            if choices:
                timer_id = choices[s[3] % len(choices)]
                due_at = state.pending_timers.get(timer_id, self.now)
                self.give(
                    TimerDue(
                        input_id=f"timer:{timer_id}:{self.uid('f')}",
                        account_id=s[1],
                        timer_id=timer_id,
                        due_at=due_at,
                        fired_at=self.now,
                    )
                )
        elif kind == "outcome":
            keys = sorted(self.state(s[1]).pending_effects)
            if keys:
                key = keys[s[3] % len(keys)]
                self.give(
                    EffectOutcome(
                        input_id=self.uid(key),
                        account_id=s[1],
                        effect_key=key,
                        outcome=s[4],
                        attempt=1,
                        occurred_at=self.now,
                        next_attempt_at=self.now + timedelta(minutes=1),
                        step="downgraded" if s[4] == "progressed" else "",
                    )
                )
        elif kind == "op":
            cls = {"reset": ResetAccount, "exclude": ExcludeAccount, "resolve": MarkResolved}
            self.give(
                cls[s[2]](
                    input_id=self.uid(s[2]),
                    account_id=s[1],
                    occurred_at=self.now,
                    actor="op",
                    reason="test",
                )
            )
        elif kind == "journey":
            a, gaps = s[1], s[2]
            self.step(("auth", a, gaps[0], 0))
            self.step(("hook", a, gaps[1], 0, (2, "account.stopped")))
            self.step(("fire", a, gaps[2], 0))
            self.step(("second", a))
            self.step(("hook", a, gaps[3], 0, (2, "account.running")))
        elif kind == "neglect":
            # Nobody takes the second step: reminders fire, then the account stalls.
            for _ in range(4):
                self.step(("fire", s[1], 61, 0))
        elif kind == "retried":
            # A journey whose first second step the provider ignores, then asked again.
            a, gaps = s[1], s[2]
            self.step(("auth", a, gaps[0], 0))
            self.step(("hook", a, gaps[1], 0, (2, "account.stopped")))
            self.step(("fire", a, gaps[2], 0))
            self.step(("second", a))
            self.step(("ignored", a))
            self.step(("second", a))
            self.step(("hook", a, gaps[3], 0, (2, "account.running")))
        elif kind == "ignored":
            self.step(("fire", s[1], 16, 0))
            self.step(("observe", s[1], 1, 0, "stopped"))
        elif kind == "second":
            # The second step the policy asked for: a re-auth, or the restart's success.
            state = self.state(s[1])
            restarts = [k for k in sorted(state.pending_effects) if ":restart:" in k]
            if restarts:
                self.step(("outcome", s[1], 0, 0, "succeeded"))
            else:
                self.step(("auth", s[1], 1, 0))
        elif kind == "redeliver":
            self.give(self.given[s[1] % len(self.given)])
        elif kind == "restart":
            self.restart()

    def restart(self) -> None:
        """A daemon restart: states rebuilt from the log, projection from its snapshot."""
        replayed = Harness()
        for logged in self.h.log:
            evolve_stream(replayed, logged.stream, logged.event)
        assert replayed.accounts == self.h.accounts
        assert replayed.application == self.h.application
        self.h.accounts, self.h.application = replayed.accounts, replayed.application
        self.live = Projection.from_snapshot(self.live.to_snapshot())


def replay(log, upto: int | None = None, hot_limit: int = 50_000) -> Projection:
    projection = Projection(hot_limit)
    for logged in log[:upto]:
        projection.apply(logged.position, logged.event)
    return projection


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.sampled_from(["notify", "restart"]),
    steps=st.lists(step, max_size=40),
    cut=st.integers(min_value=0, max_value=400),
)
def test_any_input_sequence_keeps_the_invariants(policy, steps, cut):
    """Replay equals live, static needs a late-enough second step, timers fire once, keys
    unique, and no account waits without a pending timer."""
    run = Run(policy)
    for s in steps:
        run.step(s)
        # (e) no account waits in a non-final state with nothing pending that would move it on
        # (a deleted account is the exception: nothing more is done for it, by design)
        for state in run.h.accounts.values():
            if state.state in WAITING and "deleted" not in state.flags:
                assert state.pending_timers, (state.state, state.flags, state.closed_timers)
    log = run.h.log

    # (a) the live projection equals a fresh replay, and a snapshot at any point plus the tail
    full = replay(log)
    assert run.live == full
    assert full.check_indexes() == []  # the kept counts agree with the accounts
    for account_id, state in run.h.accounts.items():
        assert full.account(account_id) == state
    cut = min(cut, len(log))
    resumed = Projection.from_snapshot(replay(log, cut).to_snapshot())
    for logged in log[cut:]:
        resumed.apply(logged.position, logged.event)
    assert resumed == full

    # (a') a snapshot stored as parts, the changed ones written again each time, restores it
    kept, stored = replay(log, cut, hot_limit=2), {}

    def write(projection: Projection) -> bytes:
        taken = projection.take_snapshot()
        if taken.complete:
            stored.clear()
        stored.update((part[0], part) for part in taken.encode(0, len(taken.items)))
        return taken.header

    write(kept)
    for logged in log[cut:]:
        kept.apply(logged.position, logged.event)
    assert Projection.from_parts(write(kept), stored.values()) == full

    # (b) no static without a second step at least `delay` after the first auth
    states: dict[str, AccountState] = {}
    for logged in log:
        event = logged.event
        if logged.stream == APPLICATION_STREAM:
            continue
        before = states.get(logged.stream)
        if isinstance(event, StateChanged) and event.to_state in ("second_auth", "static"):
            assert before is not None
            assert before.first_auth_at is not None
            earliest = before.first_auth_at + SETTINGS.delay
            step_at = before.second_step_at if before.state == "second_auth" else event.at
            if event.to_state == "second_auth":
                step_at = event.at
            assert step_at is not None
            assert step_at >= earliest
        states[logged.stream] = evolve_account(before, event)

    # (c) each timer is scheduled once and fires at most once
    events = [logged.event for logged in log]
    scheduled = Counter(e.timer_id for e in events if isinstance(e, TimerScheduled))
    fired = Counter(e.timer_id for e in events if isinstance(e, TimerFired))
    assert all(n == 1 for n in scheduled.values())
    assert all(n == 1 for n in fired.values())
    assert set(fired) <= set(scheduled)

    # (d) every effect's idempotency key is unique
    keys = Counter(e.idempotency_key for e in events if isinstance(e, EffectRequested))
    assert all(n == 1 for n in keys.values())

    reached = {a.state for a in run.h.accounts.values()}
    note_case("reached static" if "static" in reached else "-")
    note_case("stalled" if "stalled" in reached else "-")
    retried = any(
        isinstance(e, StateChanged)
        and (e.from_state, e.to_state) == ("second_auth", "second_step_due")
        for e in events
    )
    note_case("second step retried" if retried else "-")

    # every input was recorded: each given input has its first event
    ids = {logged.event_id for logged in log}
    assert all(first_event_id(inp.input_id) in ids for inp in run.given)


enrolments = st.lists(
    st.tuples(
        st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=5),
        st.sampled_from(("w1", "w2", "w3")),
    ),
    max_size=12,
)


@given(enrolments)
def test_enrolments_keep_wave_sizes_and_never_change_an_earlier_state(
    waves: list[tuple[list[str], str]],
) -> None:
    """For any sequence of enrolments the accounts per wave match the enrolments, an account
    enrolled again moves to its new wave, and every earlier application state is unchanged."""
    state = ApplicationState()
    history: list[tuple[ApplicationState, dict[str, str]]] = []
    for accounts, wave in waves:
        history.append((state, {a: e.wave for a, e in state.enrollments.items()}))
        event = AccountsEnrolled(occurred_at=T0, account_ids=tuple(accounts), wave=wave,
                                 policy="notify", actor="ops", reason="")  # fmt: skip
        state = evolve_application(state, event)
        counts = Counter(e.wave for e in state.enrollments.values())
        assert state.waves() == dict(counts)
    for earlier, seen in history:
        assert {a: e.wave for a, e in earlier.enrollments.items()} == seen
