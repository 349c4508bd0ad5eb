"""One test per migration transition and per edge case the README lists."""

from __future__ import annotations

from datetime import timedelta

from daemon.domain import (
    AppNotified,
    AuthRecorded,
    Event,
    ProviderCheckRequested,
    ReauthRequested,
    StateChanged,
    SyncRestartRequested,
    TimerFiringIgnored,
)


def names(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_first_auth_of_enrolled_account_starts_the_migration(flow):
    """An enrolled account's first auth moves it to first_auth and arms the stop grace timer."""
    flow.setup()
    events = flow.auth(1, email="u@example.com")
    assert names(events) == ["AuthRecorded", "StateChanged", "TimerScheduled"]
    s = flow.state()
    assert s.state == "first_auth"
    assert s.cycle == 1
    assert s.policy == "notify"
    assert s.wave == "w1"
    assert list(s.timer_purposes.values()) == ["stop_grace"]


def test_stop_after_first_auth_waits_until_first_auth_plus_delay(flow):
    """The stop moves the account to stopped_waiting with the second step due at auth + delay."""
    flow.setup()
    flow.auth(1)
    flow.hook("account.stopped", 2)
    s = flow.state()
    assert s.state == "stopped_waiting"
    assert s.second_step_due_at == flow.at(1) + flow.settings.delay
    assert list(s.timer_purposes.values()) == ["second_step"]


def test_second_step_is_never_due_before_the_observed_stop(flow):
    """A stop seen after the delay makes the second step due at the stop, not earlier."""
    flow.setup()
    flow.auth(1)
    flow.observe(45, sync_state="stopped")
    assert flow.state().second_step_due_at == flow.at(45)


def test_timer_makes_second_step_due_and_asks_for_reauth(flow):
    """When the delay is over the user is asked to re-authenticate and a reminder is armed."""
    flow.setup()
    flow.auth(1)
    flow.hook("account.stopped", 2)
    events = flow.fire("second_step")
    assert names(events)[:3] == ["TimerFired", "StateChanged", "ReauthRequested"]
    s = flow.state()
    assert s.state == "second_step_due"
    assert list(s.pending_effects) == ["a:reauth:1:0"]
    assert list(s.timer_purposes.values()) == ["reminder"]


def test_restart_policy_requests_a_sync_restart_and_its_success_is_the_second_step(flow):
    """With the restart policy the due step restarts the sync, and its success counts."""
    flow.setup(policy="restart")
    flow.auth(1)
    flow.hook("account.stopped", 2)
    events = flow.fire("second_step")
    [restart] = [e for e in events if isinstance(e, SyncRestartRequested)]
    flow.outcome(restart.idempotency_key, "succeeded")
    assert flow.state().state == "second_auth"
    flow.hook("account.running", 40)
    assert flow.state().state == "static"


def test_second_auth_then_running_makes_the_account_static(flow):
    """A second auth after the due time then account.running completes the move."""
    flow.to_second_step_due()
    flow.auth(35)
    s = flow.state()
    assert s.state == "second_auth"
    # Only the deadline for the account to run is left.
    assert s.pending_timers == {"a:running_grace:1:1": flow.at(35) + flow.settings.running_grace}
    assert s.pending_effects == {}  # the reauth request is no longer needed
    flow.hook("account.running", 36)
    s = flow.state()
    assert s.state == "static"
    assert s.static_at == flow.at(36)
    assert s.pending_timers == {}
    assert s.closed_timers["a:running_grace:1:1"] == "cancelled"


def test_account_connected_also_completes_the_move(flow):
    """account.connected after the second step counts like account.running."""
    flow.to_second_step_due()
    flow.auth(35)
    flow.hook("account.connected", 36)
    assert flow.state().state == "static"


def test_reminders_then_stalled(flow):
    """Without a second step the user is reminded per schedule, then the account stalls."""
    flow.to_second_step_due()
    flow.fire("reminder")
    flow.fire("reminder")
    s = flow.state()
    assert s.reminders == 2
    assert sorted(s.pending_effects) == ["a:reauth:1:2"]  # older requests superseded
    assert list(s.timer_purposes.values()) == ["stall"]
    flow.fire("stall")
    assert flow.state().state == "stalled"
    assert flow.state().pending_timers == {}


def test_late_second_auth_leaves_stalled(flow):
    """A second auth for a stalled account still moves it on."""
    flow.to_second_step_due()
    for purpose in ("reminder", "reminder", "stall"):
        flow.fire(purpose)
    flow.auth(60 * 50)
    assert flow.state().state == "second_auth"


def test_early_second_auth_is_recorded_waiting_continues_and_app_is_told(flow):
    """A second auth before the delay is kept, flagged, the app is told, and the timer stays."""
    flow.setup()
    flow.auth(1)
    flow.hook("account.stopped", 2)
    events = flow.auth(10)
    assert names(events) == ["AuthRecorded", "FlagRaised", "AppNotified"]
    assert events[0].classification == "early_second_auth"
    s = flow.state()
    assert s.state == "stopped_waiting"
    assert "early_second_auth" in s.flags
    assert list(s.timer_purposes.values()) == ["second_step"]
    assert isinstance(events[-1], AppNotified)
    flow.auth(20)  # a second early auth gets its own notification
    assert len(flow.state().pending_effects) == 2


def test_auth_after_due_before_timer_fired_is_the_second_auth(flow):
    """An auth after the due time counts even if the timer has not fired yet."""
    flow.setup()
    flow.auth(1)
    flow.hook("account.stopped", 2)
    flow.auth(40)
    s = flow.state()
    assert s.state == "second_auth"
    assert list(s.timer_purposes.values()) == ["running_grace"]
    assert flow.fire_id("a:second_step:1")[0].__class__ is TimerFiringIgnored


def test_running_before_the_stop_it_follows_does_not_complete_anything(flow):
    """An early-delivered account.running leaves first_auth waiting, and the stop still counts."""
    flow.setup()
    flow.auth(1)
    events = flow.hook("account.running", 3)
    assert "before the stop" in events[0].reason
    assert flow.state().state == "first_auth"
    flow.hook("account.stopped", 2)
    assert flow.state().state == "stopped_waiting"


def test_stop_for_an_account_that_never_authenticated_is_remembered(flow):
    """A stop before any auth changes nothing, but a late-reported first auth then uses it."""
    flow.setup()
    events = flow.hook("account.stopped", 2)
    assert flow.state().state == "dynamic"
    assert "the usual order" in events[0].reason
    flow.auth(1)  # the app reports the auth that happened before the stop
    s = flow.state()
    assert s.state == "stopped_waiting"
    assert s.stopped_at == flow.at(2)


def test_stop_that_never_comes_asks_for_a_provider_check(flow):
    """No stop within stop_grace flags the account and requests a provider check."""
    flow.setup()
    flow.auth(1)
    events = flow.fire("stop_grace")
    assert any(isinstance(e, ProviderCheckRequested) for e in events)
    assert "stop_overdue" in flow.state().flags
    flow.observe(15, sync_state="stopped")  # the reconciler's view counts as the stop
    s = flow.state()
    assert s.state == "stopped_waiting"
    assert "stop_overdue" not in s.flags


def test_invalid_and_sync_error_flag_without_changing_state(flow):
    """account.invalid and sync_error are flags at any step, cleared by a running account."""
    flow.to_second_step_due()
    flow.hook("account.invalid", 33)
    flow.hook("account.sync_error", 34)
    s = flow.state()
    assert s.state == "second_step_due"
    assert {"invalid", "sync_error"} <= s.flags
    flow.auth(35)
    flow.hook("account.running", 36)
    assert not ({"invalid", "sync_error"} & flow.state().flags)


def test_deleted_mid_way_drops_timers_and_effects(flow):
    """A deleted account keeps its record but nothing more is scheduled or performed for it."""
    flow.to_second_step_due()
    flow.hook("grant.deleted", 33, version=3)
    s = flow.state()
    assert "deleted" in s.flags
    assert s.pending_timers == {}
    assert s.pending_effects == {}
    events = flow.hook("account.running", 34)
    assert events[0].reason.startswith("account deleted")


def test_auth_after_deletion_starts_a_new_cycle(flow):
    """An auth for a deleted account shows it exists again and its migration starts over."""
    flow.to_second_step_due()
    flow.observe(33, exists=False)
    flow.auth(40)
    s = flow.state()
    assert s.state == "first_auth"
    assert s.cycle == 2
    assert "deleted" not in s.flags


def test_reset_forgets_progress(flow):
    """A reset drops timers, effects and flags and returns the account to dynamic."""
    flow.to_second_step_due()
    flow.hook("account.invalid", 33)
    flow.operator("reset")
    s = flow.state()
    assert (s.state, s.pending_timers, s.pending_effects, s.flags) == ("dynamic", {}, {}, set())
    flow.auth(40)
    assert flow.state().cycle == 2


def test_excluded_account_records_everything_and_does_nothing(flow):
    """An excluded account's inputs are recorded with the reason, without transitions."""
    flow.to_second_step_due()
    flow.operator("exclude")
    assert flow.state().state == "excluded"
    assert flow.state().pending_timers == {}
    events = flow.auth(40)
    assert names(events) == ["AuthRecorded"]
    assert events[0].classification == "excluded"
    flow.operator("reset")
    assert flow.state().state == "dynamic"


def test_mark_resolved_makes_a_stalled_account_static(flow):
    """The operator can confirm a stalled account's second step was done out of band."""
    flow.to_second_step_due()
    for purpose in ("reminder", "reminder", "stall"):
        flow.fire(purpose)
    flow.operator("resolve")
    assert flow.state().state == "static"


def test_mark_resolved_is_refused_before_the_delay(flow):
    """Resolving before the delay has passed is recorded and refused."""
    flow.setup()
    flow.auth(1)
    events = flow.operator("resolve")
    assert events[0].reason.startswith("refused")
    assert flow.state().state == "first_auth"


def test_reauth_after_static_is_normal(flow):
    """Auths of a static account are ordinary: no new migration."""
    flow.to_second_step_due()
    flow.auth(35)
    flow.hook("account.running", 36)
    events = flow.auth(100)
    assert names(events) == ["AuthRecorded"]
    assert events[0].classification == "normal"
    assert flow.state().state == "static"


def test_auth_of_not_enrolled_account_is_recorded_without_migration(flow):
    """An account not enrolled in a wave stays dynamic; the auth says why."""
    flow.setup("b")
    events = flow.auth(1)
    assert events[0].classification == "not_enrolled"
    assert flow.state().state == "dynamic"


def test_auth_before_migration_enabled_is_recorded_without_migration(flow):
    """Without the application's enablement nothing starts."""
    flow.setup(enable=False)
    events = flow.auth(1)
    assert isinstance(events[0], AuthRecorded)
    assert events[0].classification == "migration_disabled"
    assert flow.state().state == "dynamic"


def test_timer_fires_at_most_once(flow):
    """A second delivery of a timer firing is recorded as ignored and changes nothing."""
    flow.setup()
    flow.auth(1)
    flow.hook("account.stopped", 2)
    flow.fire_id("a:second_step:1")
    before = flow.state()
    events = flow.fire_id("a:second_step:1")
    assert names(events) == ["TimerFiringIgnored"]
    assert events[0].reason == "timer already fired"
    assert flow.state().state == before.state
    assert flow.state().pending_effects == before.pending_effects


def test_redelivered_input_is_recorded_once(flow):
    """The harness, like the daemon, skips an input whose first event already exists."""
    from daemon.domain import AuthReported

    flow.setup()
    inp = AuthReported(input_id="auth-x", account_id="a", occurred_at=flow.at(1))
    assert flow.h.handle(inp, flow.now)
    assert flow.h.handle(inp, flow.now) == []


def test_v3_grant_updated_with_reauth_code_is_an_auth(flow):
    """grant.updated with code 25027 counts as an authentication."""
    flow.setup()
    events = flow.hook("grant.updated", 1, version=3, code=25027, email="u@x")
    assert names(events)[:2] == ["ProviderNotificationRecorded", "AuthRecorded"]
    assert flow.state().state == "first_auth"
    assert flow.state().email == "u@x"


def test_unknown_trigger_is_recorded_as_unrecognised(flow):
    """A trigger outside the table is recorded, with its meaning, and does nothing."""
    flow.setup()
    events = flow.hook("account.exploded", 1)
    assert names(events) == ["ProviderNotificationRecorded"]
    assert events[0].meaning == "unrecognised"


def test_effect_outcomes_update_and_clear_pending_effects(flow):
    """A failed attempt keeps the effect with its retry time; gave_up removes it and flags."""
    flow.to_second_step_due()
    key = "a:reauth:1:0"
    retry_at = flow.now + timedelta(minutes=5)
    flow.outcome(key, "failed_retrying", next_attempt_at=retry_at)
    pending = flow.state().pending_effects[key]
    assert (pending.attempts, pending.next_attempt_at) == (1, retry_at)
    flow.outcome(key, "gave_up", attempt=2)
    assert key not in flow.state().pending_effects
    assert "effect_gave_up" in flow.state().flags
    events = flow.outcome(key, "succeeded", attempt=3)
    assert names(events) == ["EffectOutcomeIgnored"]


def test_a_restarts_recorded_downgrade_stays_with_the_pending_effect(flow):
    """A restart's downgrade is recorded as a step of the still pending effect, once, moving
    nothing; a later success is the second step as before."""
    flow.setup(policy="restart")
    flow.auth(1)
    flow.hook("account.stopped", 2)
    [restart] = [e for e in flow.fire("second_step") if isinstance(e, SyncRestartRequested)]
    key = restart.idempotency_key
    events = flow.outcome(key, "progressed", step="downgraded", detail="downgrade answered 200")
    assert names(events) == ["EffectProgressed"]
    pending = flow.state().pending_effects[key]
    assert (pending.steps, pending.attempts) == (("downgraded",), 0)
    assert flow.state().state == "second_step_due"
    flow.outcome(key, "failed_retrying", next_attempt_at=flow.now + timedelta(minutes=1))
    flow.outcome(key, "progressed", attempt=2, step="downgraded")
    assert flow.state().pending_effects[key].steps == ("downgraded",)
    flow.outcome(key, "succeeded", attempt=2)
    assert key not in flow.state().pending_effects
    assert flow.state().state == "second_auth"
    assert names(flow.outcome(key, "progressed", attempt=3, step="downgraded")) == [
        "EffectOutcomeIgnored"
    ]


def test_reminder_requests_carry_the_users_email(flow):
    """The re-auth request names the email of the last auth, so the app can reach the user."""
    flow.setup()
    flow.auth(1, email="u@example.com")
    flow.hook("account.stopped", 2)
    [req] = [e for e in flow.fire("second_step") if isinstance(e, ReauthRequested)]
    assert req.email == "u@example.com"
    assert req.stage == "second_step"


def test_seconds_long_settings_work(flow):
    """Nothing assumes minutes: a demo with seconds-long delays runs the whole flow."""
    from daemon.domain import MigrationSettings

    from_conftest = type(flow)
    quick = from_conftest(
        MigrationSettings(
            delay=timedelta(seconds=3),
            reminder_schedule=(timedelta(seconds=2),),
            stall_after=timedelta(seconds=2),
            stop_grace=timedelta(seconds=1),
        )
    )
    quick.setup()
    quick.auth(0.01)
    quick.hook("account.stopped", 0.02)
    assert quick.state().second_step_due_at == quick.at(0.01) + timedelta(seconds=3)
    events = quick.fire("second_step")
    assert any(isinstance(e, StateChanged) and e.to_state == "second_step_due" for e in events)


def test_stop_stamped_in_the_same_second_before_the_auth_counts_as_its_stop(flow):
    """Provider times are whole seconds: a stop stamped <1 s before the auth may follow it."""
    flow.setup()
    flow.hook("account.stopped", 10)  # stamped 10:00, the auth happened at 10:00.4
    flow.auth(10 + 0.4 / 60)
    s = flow.state()
    assert s.state == "stopped_waiting"
    assert s.second_step_due_at == s.first_auth_at + flow.settings.delay


def test_stop_stamped_well_before_the_auth_is_not_its_stop(flow):
    """A stop from seconds before the auth belongs to an earlier event, not this migration."""
    flow.setup()
    flow.hook("account.stopped", 10)
    flow.auth(10 + 5 / 60)
    assert flow.state().state == "first_auth"


def test_reminder_lets_a_restart_still_being_retried_finish(flow):
    """A reminder does not supersede a restart still retrying; its late success is the step."""
    flow.setup(policy="restart")
    flow.auth(1)
    flow.hook("account.stopped", 2)
    [restart] = [e for e in flow.fire("second_step") if isinstance(e, SyncRestartRequested)]
    flow.outcome(restart.idempotency_key, "failed_retrying", next_attempt_at=flow.at(200))
    reminder_events = flow.fire("reminder")
    assert not [e for e in reminder_events if isinstance(e, SyncRestartRequested)]
    assert list(flow.state().pending_effects) == [restart.idempotency_key]
    flow.outcome(restart.idempotency_key, "succeeded", attempt=2)
    assert flow.state().state == "second_auth"


# --- a second step the provider did not act on -------------------------------------------------


def _second_auth_then_grace(flow) -> list[Event]:
    """Second auth at 35 min, then the running-grace deadline passes without account.running."""
    flow.to_second_step_due()
    flow.auth(35)
    return flow.fire("running_grace")


def test_no_running_after_the_second_step_asks_for_a_provider_check(flow):
    """Not running `running_grace` after the second step: flagged, and the provider is asked."""
    events = _second_auth_then_grace(flow)
    assert names(events) == ["TimerFired", "FlagRaised", "ProviderCheckRequested", "TimerScheduled"]
    [check] = [e for e in events if isinstance(e, ProviderCheckRequested)]
    assert check.idempotency_key == "a:provider_check:1:step:1"
    assert "running_grace" in events[0].timer_id
    s = flow.state()
    assert s.state == "second_auth"
    assert "running_overdue" in s.flags
    assert check.idempotency_key in s.pending_effects


def test_stopped_after_the_second_step_requests_it_again(flow):
    """A check finding the account still stopped sends it back to second_step_due, asking again."""
    _second_auth_then_grace(flow)
    events = flow.observe(50, sync_state="stopped")
    # The stall deadline armed when the grace passed gives way to the retry's own schedule.
    assert names(events)[:3] == ["AccountObservationRecorded", "TimerCancelled", "FlagCleared"]
    [back] = [e for e in events if isinstance(e, StateChanged)]
    assert (back.from_state, back.to_state) == ("second_auth", "second_step_due")
    assert "the move did not happen" in back.reason
    [request] = [e for e in events if isinstance(e, ReauthRequested)]
    # The numbering continues after request 0: a new key, never a reset of the cycle.
    assert (request.idempotency_key, request.reminder, request.stage) == (
        "a:reauth:1:1",
        1,
        "retry",
    )
    s = flow.state()
    assert s.state == "second_step_due"
    assert s.cycle == 1
    assert s.reminders == 1
    assert "running_overdue" not in s.flags
    # The next reminder is the one after the retry, at its usual place in the schedule.
    assert s.timer_purposes == {"a:reminder:1:2": "reminder"}
    assert s.pending_timers["a:reminder:1:2"] == flow.at(31) + timedelta(hours=24)


def test_second_auth_after_a_retry_then_running_makes_the_account_static(flow):
    """After a retry the user's next auth is the second step and account.running ends the move."""
    _second_auth_then_grace(flow)
    flow.observe(50, sync_state="stopped")
    flow.outcome("a:provider_check:1:step:1", "succeeded")
    events = flow.auth(60)
    assert events[0].classification == "second_auth"
    s = flow.state()
    assert s.state == "second_auth"
    assert s.second_step_at == flow.at(60)
    assert list(s.pending_timers) == ["a:running_grace:1:2"]
    flow.hook("account.running", 61)
    s = flow.state()
    assert s.state == "static"
    assert s.pending_timers == {}


def test_stop_soon_after_the_second_step_is_not_a_failed_move(flow):
    """A stop within running_grace of the step (a restart stops first) keeps second_auth."""
    flow.setup(policy="restart")
    flow.auth(1)
    flow.hook("account.stopped", 2)
    [restart] = [e for e in flow.fire("second_step") if isinstance(e, SyncRestartRequested)]
    flow.outcome(restart.idempotency_key, "succeeded")
    events = flow.hook("account.stopped", 32)
    assert names(events) == ["ProviderNotificationRecorded"]
    assert "may still be moving" in events[0].reason
    assert flow.state().state == "second_auth"
    flow.hook("account.running", 33)
    assert flow.state().state == "static"


def test_stopped_webhook_long_after_a_restart_requests_another_restart(flow):
    """Under the restart policy a failed move restarts the sync again, with a new key."""
    flow.setup(policy="restart")
    flow.auth(1)
    flow.hook("account.stopped", 2)
    [first] = [e for e in flow.fire("second_step") if isinstance(e, SyncRestartRequested)]
    flow.outcome(first.idempotency_key, "succeeded")
    # The webhook comes before the running_grace timer fired (say, the daemon was down).
    events = flow.hook("account.stopped", 31 + 20)
    [again] = [e for e in events if isinstance(e, SyncRestartRequested)]
    assert again.idempotency_key == "a:restart:1:1"
    assert "did not move" in again.reason
    s = flow.state()
    assert s.state == "second_step_due"
    assert s.closed_timers["a:running_grace:1:1"] == "cancelled"
    flow.outcome(again.idempotency_key, "succeeded")
    assert flow.state().state == "second_auth"
    flow.hook("account.running", 52)
    assert flow.state().state == "static"


def test_retry_after_the_last_reminder_still_ends_in_a_stall(flow):
    """A step that did not take after the last reminder gets a fresh stall deadline of its own."""
    flow.to_second_step_due()
    flow.fire("reminder")
    flow.fire("reminder")
    assert list(flow.state().timer_purposes) == ["a:stall:1"]
    answered = 31 + 25 * 60
    flow.auth(answered)
    flow.fire("running_grace")
    flow.observe(answered + 15, sync_state="stopped")
    s = flow.state()
    assert s.state == "second_step_due"
    assert s.reminders == 3
    # The user gets the whole stall_after to answer the retry.
    assert s.pending_timers == {"a:stall:1:3": flow.at(answered + 15) + timedelta(hours=24)}
    flow.fire("stall")
    assert flow.state().state == "stalled"


def test_auth_from_before_a_failed_step_is_stale(flow):
    """A late-delivered auth from before the step the provider ignored does not count again."""
    _second_auth_then_grace(flow)
    flow.observe(50, sync_state="stopped")
    events = flow.auth(34)
    assert events[0].classification == "stale"
    assert flow.state().state == "second_step_due"


# --- accounts flagged invalid / sync_error: only the user's re-auth repairs them ---------------


def test_auth_clears_both_invalid_and_sync_error(flow):
    """Both flags ask for a re-auth, so the user's auth clears them without waiting for running."""
    flow.setup()
    flow.auth(1)
    flow.hook("account.stopped", 2)
    flow.hook("account.invalid", 3)
    flow.hook("account.sync_error", 4)
    assert {"invalid", "sync_error"} <= flow.state().flags
    events = flow.auth(35)
    cleared = {e.flag for e in events if type(e).__name__ == "FlagCleared"}
    assert cleared == {"invalid", "sync_error"}
    assert flow.state().state == "second_auth"
    assert not ({"invalid", "sync_error"} & flow.state().flags)


def test_restart_policy_asks_a_flagged_account_to_reauth_when_the_step_is_due(flow):
    """A restart cannot mend credentials: a flagged account's due step is a re-auth request."""
    flow.setup(policy="restart")
    flow.auth(1, email="u@example.com")
    flow.hook("account.stopped", 2)
    flow.hook("account.sync_error", 3)
    events = flow.fire("second_step")
    assert not [e for e in events if isinstance(e, SyncRestartRequested)]
    [request] = [e for e in events if isinstance(e, ReauthRequested)]
    assert (request.idempotency_key, request.stage, request.email) == (
        "a:reauth:1:0",
        "second_step",
        "u@example.com",
    )
    assert "flagged sync_error" in request.reason
    assert "whatever the policy (restart)" in request.reason
    # The reminders and the stall still follow the usual schedule.
    assert list(flow.state().timer_purposes.values()) == ["reminder"]
    flow.fire("reminder")
    [reminder] = flow.state().pending_effects.values()
    assert isinstance(reminder.effect, ReauthRequested)
    assert reminder.effect.stage == "reminder"


def test_flag_while_a_restart_is_due_asks_the_user_at_once(flow):
    """An account flagged after its restart was requested gets a re-auth request straight away."""
    flow.setup(policy="restart")
    flow.auth(1)
    flow.hook("account.stopped", 2)
    [restart] = [e for e in flow.fire("second_step") if isinstance(e, SyncRestartRequested)]
    retry_at = flow.now + timedelta(minutes=30)
    flow.outcome(restart.idempotency_key, "failed_retrying", next_attempt_at=retry_at)
    events = flow.hook("account.invalid", 40)
    [request] = [e for e in events if isinstance(e, ReauthRequested)]
    assert "flagged invalid" in request.reason
    s = flow.state()
    assert s.state == "second_step_due"
    # The restart still retrying is left to finish; the reminder schedule is unchanged.
    assert sorted(s.pending_effects) == sorted([restart.idempotency_key, request.idempotency_key])
    assert list(s.timer_purposes.values()) == ["reminder"]
    # A flag seen again adds nothing while the user is being asked.
    assert names(flow.observe(41, sync_state="invalid")) == ["AccountObservationRecorded"]
    # The restart's late success is the step, and the user is still asked to re-authenticate.
    flow.outcome(restart.idempotency_key, "succeeded", attempt=2)
    s = flow.state()
    assert s.state == "second_auth"
    assert list(s.pending_effects) == [request.idempotency_key]
    flow.auth(42)
    assert not ({"invalid", "sync_error"} & flow.state().flags)
    flow.hook("account.running", 43)
    assert flow.state().state == "static"


def test_flagged_account_not_running_after_a_restart_is_asked_to_reauth(flow):
    """A restart that left the account invalid sends it back to second_step_due with a re-auth."""
    flow.setup(policy="restart")
    flow.auth(1)
    flow.hook("account.stopped", 2)
    [restart] = [e for e in flow.fire("second_step") if isinstance(e, SyncRestartRequested)]
    flow.outcome(restart.idempotency_key, "succeeded")
    flow.hook("account.invalid", 35)
    assert flow.state().state == "second_auth"
    events = flow.fire("running_grace")
    assert not [e for e in events if isinstance(e, ProviderCheckRequested | SyncRestartRequested)]
    [back] = [e for e in events if isinstance(e, StateChanged)]
    assert (back.from_state, back.to_state) == ("second_auth", "second_step_due")
    assert "flagged invalid" in back.reason
    [request] = [e for e in events if isinstance(e, ReauthRequested)]
    assert (request.idempotency_key, request.stage) == ("a:reauth:1:1", "retry")
    assert "whatever the policy (restart)" in request.reason
    s = flow.state()
    assert s.timer_purposes == {"a:reminder:1:2": "reminder"}
    flow.auth(60)
    assert flow.state().state == "second_auth"
    assert "invalid" not in flow.state().flags
    flow.hook("account.running", 61)
    assert flow.state().state == "static"


def test_flag_after_the_running_grace_asks_the_user_at_once(flow):
    """An account found invalid after its running grace is asked to re-auth, not left waiting."""
    flow.setup(policy="restart")
    flow.auth(1)
    flow.hook("account.stopped", 2)
    [restart] = [e for e in flow.fire("second_step") if isinstance(e, SyncRestartRequested)]
    flow.outcome(restart.idempotency_key, "succeeded")
    flow.fire("running_grace")  # not running: a provider check is asked for
    events = flow.observe(50, sync_state="invalid")  # what the check finds
    [back] = [e for e in events if isinstance(e, StateChanged)]
    assert (back.from_state, back.to_state) == ("second_auth", "second_step_due")
    assert [e for e in events if isinstance(e, ReauthRequested)]
    s = flow.state()
    assert s.state == "second_step_due"
    assert "running_overdue" not in s.flags
    assert list(s.timer_purposes.values()) == ["reminder"]


def test_notify_policy_flagged_account_keeps_its_reauth_reminders(flow):
    """Under notify a flag changes nothing until the step is due; the request says why."""
    flow.setup()
    flow.auth(1)
    flow.hook("account.stopped", 2)
    assert names(flow.hook("account.invalid", 3)) == ["ProviderNotificationRecorded", "FlagRaised"]
    [request] = [e for e in flow.fire("second_step") if isinstance(e, ReauthRequested)]
    assert request.idempotency_key == "a:reauth:1:0"
    assert "flagged invalid" in request.reason
    assert "whatever the policy (notify)" in request.reason


# --- no account waits forever -----------------------------------------------------------------


def test_stop_that_never_comes_stalls_in_the_end(flow):
    """Without a stop after the provider check, the account stalls where a neglected one would."""
    flow.setup()
    flow.auth(1)
    flow.fire("stop_grace")
    s = flow.state()
    patience = flow.settings.delay + timedelta(hours=24) + flow.settings.stall_after
    assert s.pending_timers == {"a:stall:1:stop": flow.at(1) + patience}
    flow.outcome("a:provider_check:1", "succeeded")
    flow.fire("stall")
    assert flow.state().state == "stalled"


def test_late_stop_after_the_grace_cancels_the_stall(flow):
    """A stop seen after the stop grace still starts the wait, and the stall deadline goes."""
    flow.setup()
    flow.auth(1)
    flow.fire("stop_grace")
    flow.hook("account.stopped", 20)
    s = flow.state()
    assert s.state == "stopped_waiting"
    assert list(s.timer_purposes.values()) == ["second_step"]
    assert s.closed_timers["a:stall:1:stop"] == "cancelled"


def test_account_never_running_after_the_second_step_stalls(flow):
    """A check that does not settle it leaves a stall deadline: the account never waits forever."""
    _second_auth_then_grace(flow)
    flow.outcome("a:provider_check:1:step:1", "succeeded")
    flow.observe(55, sync_state="initializing")  # neither running nor stopped
    s = flow.state()
    assert s.state == "second_auth"
    grace_due = flow.at(35) + flow.settings.running_grace
    assert s.pending_timers == {"a:stall:1:step:1": grace_due + flow.settings.stall_after}
    flow.fire("stall")
    assert flow.state().state == "stalled"
