"""Quotas per visitor and the fair queue of core.server.run_queue.RunRegistry, and the web app's
limits per run (steps cut with a notice, the wall-time limit) as a page shows them.

A *visitor* is one person (every tab of one browser); a *session* is one tab. The registry's
slots and queue are tested with fake runs (tests/server/test_run_queue.py's); the limits per run
with real tiny runs (tests/training/test_runner.py has the runner's side).
"""

from __future__ import annotations

import pytest

from core.server.limits import LimitError
from core.server.run_queue import SHARED_VISITOR, RunGroup, RunRegistry
from tests.server.test_run_queue import FakeRun, _wait


def _cleanup(registry: RunRegistry) -> None:
    registry.stop_all()
    for sid in list(registry._groups):
        for group in registry.groups(sid):
            group.join(5)
            assert group.done


def test_sessions_of_one_visitor_share_one_quota_another_visitor_still_starts():
    registry = RunRegistry(limit=lambda: 4, quota=lambda: 2)
    tab1 = registry.start("tab1", RunGroup([FakeRun(30)]), visitor="ann")
    tab2 = registry.start("tab2", RunGroup([FakeRun(30)]), visitor="ann")
    assert tab1.state == tab2.state == "running" and registry.visitor_slots("ann") == 2
    tab3 = registry.start("tab3", RunGroup([FakeRun(30)]), visitor="ann")
    assert tab3.state == "queued"  # two slots are free, but ann holds her share
    race = registry.start("tab3", RunGroup([FakeRun(30) for _ in range(4)]), visitor="ann")
    assert race.slots == 2 and race.state == "queued"  # narrowed to the share, and waits
    bob = registry.start("bob's tab", RunGroup([FakeRun(30)]), visitor="bob")
    assert bob.state == "running" and registry.active_slots() == 3
    registry.cancel(tab1)  # one of ann's slots frees: her oldest waiting group fits
    _wait(lambda: tab3.state == "running")
    assert race.state == "queued" and registry.visitor_slots("ann") == 2
    _cleanup(registry)


def test_without_a_visitor_each_session_is_its_own_visitor():
    registry = RunRegistry(limit=lambda: 4, quota=lambda: 2)
    groups = [registry.start(sid, RunGroup([FakeRun(30), FakeRun(30)])) for sid in "ab"]
    assert [g.state for g in groups] == ["running", "running"]
    assert registry.visitor_slots("a") == registry.visitor_slots("b") == 2
    _cleanup(registry)


def test_a_visitors_third_waiting_group_is_refused_in_plain_words():
    registry = RunRegistry(limit=lambda: 2, quota=lambda: 1)
    running = registry.start("t1", RunGroup([FakeRun(30)]), visitor="ann")
    waiting = [registry.start(f"t{i}", RunGroup([FakeRun(30)]), visitor="ann") for i in (2, 3)]
    assert running.state == "running" and [g.state for g in waiting] == ["queued", "queued"]
    refused = RunGroup([FakeRun(30)])
    with pytest.raises(LimitError) as err:
        registry.start("t4", refused, visitor="ann")
    message = str(err.value)
    assert "already have 2 training runs waiting" in message and "stop one" in message
    assert "KRONOSCOPE" not in message and "setting" not in message and "_" not in message
    assert refused.state == "new" and registry.groups("t4") == []
    assert registry.queued_count("ann") == 2 and registry.queued_count() == 2
    # another visitor is not affected: starts on the free slot, then may queue too
    bob = [registry.start("b", RunGroup([FakeRun(30)]), visitor="bob") for _ in range(3)]
    assert [g.state for g in bob] == ["running", "queued", "queued"]
    # the explorer's shared trainings wait for every visitor: not capped per visitor
    shared = [registry.start(SHARED_VISITOR, RunGroup([FakeRun(30)])) for _ in range(3)]
    assert all(g.state == "queued" for g in shared)
    assert registry.queued_count(SHARED_VISITOR) == 3
    # one of ann's waiting groups stopped: she may queue another
    registry.cancel(waiting[0])
    assert registry.start("t4", refused, visitor="ann").state == "queued"
    _cleanup(registry)


def test_freed_slots_go_round_robin_between_visitors():
    """Ann queued three groups before Bob queued two: slots go to whoever holds fewer, so
    they take turns (FIFO within each) instead of Ann going first with all of hers."""
    registry = RunRegistry(limit=lambda: 2, quota=lambda: 2, max_queued_per_visitor=5)
    blocker = registry.start("x", RunGroup([FakeRun(30), FakeRun(30)]), visitor="xavier")
    ann = [registry.start(f"a{i}", RunGroup([FakeRun(30)]), visitor="ann") for i in range(3)]
    bob = [registry.start(f"b{i}", RunGroup([FakeRun(30)]), visitor="bob") for i in range(2)]
    assert all(g.state == "queued" for g in ann + bob)
    # the places shown are the fair order: ann0 bob0 ann1 bob1 ann2
    assert [registry.position(g) for g in ann] == [1, 3, 5]
    assert [registry.position(g) for g in bob] == [2, 4]
    registry.cancel(blocker)  # two slots free: one each
    _wait(lambda: ann[0].state == "running" and bob[0].state == "running")
    assert [g.state for g in (ann[1], ann[2], bob[1])] == ["queued"] * 3
    assert [registry.position(g) for g in (ann[1], bob[1], ann[2])] == [1, 2, 3]
    registry.cancel(ann[0])  # Ann holds none now, Bob one: Ann's next goes
    _wait(lambda: ann[1].state == "running")
    assert bob[1].state == "queued" and ann[2].state == "queued"
    registry.cancel(ann[1])  # again Ann holds none, Bob one: Ann's last goes
    _wait(lambda: ann[2].state == "running")
    assert bob[1].state == "queued" and registry.position(bob[1]) == 1
    registry.cancel(bob[0])
    _wait(lambda: bob[1].state == "running")
    _cleanup(registry)


def test_a_group_that_cannot_start_does_not_block_the_other_visitors():
    registry = RunRegistry(limit=lambda: 3, quota=lambda: 2)
    ann = registry.start("a", RunGroup([FakeRun(30), FakeRun(30)]), visitor="ann")
    ann_more = registry.start("a2", RunGroup([FakeRun(30)]), visitor="ann")  # at her share
    bob = registry.start("b", RunGroup([FakeRun(30)]), visitor="bob")
    assert (ann.state, ann_more.state, bob.state) == ("running", "queued", "running")
    _cleanup(registry)


def test_a_closed_tab_is_reaped_alone_and_frees_the_visitors_share():
    alive = {"tab1": True, "tab2": True}
    registry = RunRegistry(limit=lambda: 4, quota=lambda: 2, grace_s=10, check_every_s=60)
    registry.set_session_check(lambda sid: alive[sid])
    kept = registry.start("tab1", RunGroup([FakeRun(30)]), visitor="ann")
    gone = registry.start("tab2", RunGroup([FakeRun(30)]), visitor="ann")
    gone_queued = registry.start("tab2", RunGroup([FakeRun(30)]), visitor="ann")
    assert gone_queued.state == "queued"
    alive["tab2"] = False
    assert registry.reap(now=100.0) == []  # within the grace period
    assert registry.reap(now=111.0) == ["tab2"]
    gone.join(5)
    assert gone.runs[0].status == "stopped" and gone_queued.state == "cancelled"
    assert kept.runs[0].status == "running" and registry.groups("tab2") == []
    assert registry.visitor_slots("ann") == 1
    again = registry.start("tab1", RunGroup([FakeRun(30)]), visitor="ann")
    assert again.state == "running"  # the closed tab's slot is Ann's again
    _cleanup(registry)


def test_stop_all_stops_running_and_waiting_groups():
    registry = RunRegistry(limit=lambda: 1, quota=lambda: 1)
    running = registry.start("a", RunGroup([FakeRun(30)]), visitor="ann")
    queued = registry.start("b", RunGroup([FakeRun(30)]), visitor="bob")
    assert registry.stop_all() == 2
    running.join(5)
    assert running.done and queued.state == "cancelled" and registry.queued_count() == 0


# -- the web app's limits per run, as the race page shows them -----------------------------------


@pytest.mark.usefixtures("app_env")
def test_race_page_cuts_steps_and_stops_at_the_time_limit(monkeypatch):
    from tests.webapp.test_app import app, assert_clean, wait_group

    monkeypatch.setenv("KRONOSCOPE_RUN_MAX_STEPS", "15000")
    monkeypatch.setenv("KRONOSCOPE_RUN_BUDGET_S", "1")
    at = app("race", opts="kfac", steps="20000", eval="1")
    at.button(key="race.start").click().run()
    assert_clean(at)
    group = wait_group(at, "race", timeout=60)
    run = group.runs[0]
    assert run.status == "timed_out" and run.config.steps == 15000
    n = len(run.records())
    assert 0 < n < 15000 and f"after {n} of 15,000 step(s)" in run.message
    at.run()
    assert_clean(at)
    infos = [i.value for i in at.info]
    assert any("Steps cut from 20,000 to 15,000" in text for text in infos), infos
    assert any("time limit per run" in text for text in infos), infos
    assert all("KRONOSCOPE" not in text for text in infos)
    texts = " ".join(p.text for p in at.get("progress"))
    assert "stopped at the time limit" in texts, texts
    assert len(run.dataframe()) == n  # what was computed is kept (and drawn)
