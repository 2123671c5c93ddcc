"""Zero-loss restarts, proven end to end in private network namespaces.

Each scenario runs restart_harness.py under `unshare -n`: a bounded sender
sends sequence numbers from 32 source ports at 20,000 datagrams/s over
loopback while the scenario restarts, upgrades, kills and starves workers.
Every master runs at the defaults a user gets (no --rcvbuf, no timeouts),
with a per-packet handler and, where it matters, a batch handler. Every
number must arrive exactly once, or be lost inside the one receive a killed
worker held (the bound the master reports), and the namespace's Udp
counters NoPorts, RcvbufErrors and InErrors must not move.
"""

import os
import shutil

import pytest

from conftest import needs_namespace
from restart_harness import run_in_namespace

pytestmark = needs_namespace
HANDLERS = pytest.mark.parametrize("handler", ["packet", "batch"])
QUIET = {"NoPorts": 0, "RcvbufErrors": 0, "InErrors": 0}


def run_scenario(name: str, *args: str) -> dict:
    return run_in_namespace(name, *args, timeout=300)


def assert_exact(r: dict) -> None:
    """Every number sent arrived exactly once; nothing dropped anywhere."""
    assert r["sent"] > 0
    assert r["duplicates"] == 0 and r["outside"] == 0
    assert r["missing"] == 0, r
    assert r["received"] == r["sent"]
    assert r["counters"] == QUIET, r
    assert r["reported_drops"] == 0
    assert r["master_exit"] == 0


def assert_within_held(r: dict) -> None:
    """Nothing lost but inside the receives killed workers held, which the
    master reported as an upper bound."""
    assert r["sent"] > 0
    assert r["duplicates"] == 0 and r["outside"] == 0
    assert 0 <= r["missing"] <= r["held_bound"], r
    assert r["counters"] == QUIET, r
    assert r["master_exit"] == 0


@HANDLERS
def test_rolling_restarts(handler):
    r = run_scenario("hup", "--restarts", "10", "--handler", handler)
    assert len(r["restart_seconds"]) == 10
    assert_exact(r)


def test_a_handler_that_flushes_when_its_worker_leaves_loses_nothing():
    # Its output reaches the file only in worker_stop(): through rolling
    # restarts, added and removed workers and the final stop.
    assert_exact(run_scenario("hup", "--restarts", "5", "--handler", "buffered"))
    assert_exact(run_scenario("ttin_ttou", "--handler", "buffered"))


def test_rolling_restarts_on_one_shared_socket():
    assert_exact(run_scenario("shared", "--restarts", "5"))


@HANDLERS
def test_workers_added_and_removed(handler):
    assert_exact(run_scenario("ttin_ttou", "--handler", handler))


@HANDLERS
def test_master_upgrades_keep_every_socket_and_every_flow_on_its_slot(handler):
    r = run_scenario("usr2", "--restarts", "2", "--handler", handler)
    assert r["old_master_exits"] == [0, 0]
    assert_exact(r)
    assert r["slots_per_flow"] == 1
    assert 1 <= r["process_changes_per_flow"] <= 2


def test_flows_keep_their_slot_across_ten_rolling_restarts():
    r = run_scenario("flows", "--restarts", "10")
    assert_exact(r)
    assert r["slots_per_flow"] == 1
    # A flow's datagrams change process once per restart at most: the
    # socket passes from one worker to the next, never back and forth.
    assert 1 <= r["process_changes_per_flow"] <= 10


@HANDLERS
def test_second_instance_takes_over(handler):
    r = run_scenario("second", "--handler", handler)
    assert r["first_exit"] == 0
    assert_exact(r)


def test_second_instance_takes_over_the_very_sockets():
    r = run_scenario("takeover")
    assert r["first_exit"] == 0
    assert_exact(r)


def test_takeover_rolled_back_leaves_the_first_serving():
    r = run_scenario("takeover_rollback")
    assert r["second_exit"] == 0
    assert_exact(r)


def test_first_master_crashing_after_a_takeover_leaves_the_second_serving():
    assert_exact(run_scenario("takeover_crash"))


def test_failed_second_instance_touches_nothing_of_the_first():
    r = run_scenario("failed_second")
    assert r["second_exits"] == [2, 2]
    assert r["pid_file_kept"] and r["handoff_kept"]
    assert_exact(r)


@HANDLERS
def test_failed_upgrade_keeps_the_master_serving(handler):
    r = run_scenario("failed_usr2", "--handler", handler)
    assert r["pid_file_kept"]
    assert_exact(r)


def test_systemd_socket_activation_and_restarts():
    if shutil.which("systemd-socket-activate") is None:
        pytest.fail("systemd-socket-activate is missing: .ci/run installs Debian's systemd")
    assert_exact(run_scenario("systemd", "--restarts", "3"))


@HANDLERS
def test_service_manager_restarts_and_crash_on_the_socket_it_keeps(handler):
    r = run_scenario("manager", "--handler", handler)
    assert r["term_exit"] == 0
    assert_exact(r)


def assert_no_holes_before_the_stop(r: dict) -> None:
    assert r["master_exit"] == 0
    assert r["duplicates"] == 0 and r["outside"] == 0
    # Everything up to the last delivered number arrived: no holes. What was
    # sent after the sockets were shed was refused by the kernel (NoPorts).
    assert r["unique"] == r["highest"] + 1 > 0
    assert r["counters"]["NoPorts"] == r["missing"]
    assert r["counters"]["RcvbufErrors"] == r["counters"]["InErrors"] == 0


@HANDLERS
def test_term_while_sending_delivers_everything_sent_before_the_stop(handler):
    assert_no_holes_before_the_stop(run_scenario("term", "--handler", handler))


def test_term_during_a_slow_start_does_not_wait_for_it():
    r = run_scenario("slow_start_term")
    assert_no_holes_before_the_stop(r)
    # The new workers' import stalls for 8 s; the stop must not wait for it.
    assert r["master_stop_seconds"] < 8


@HANDLERS
def test_killed_worker_loses_at_most_the_receive_it_held(handler):
    r = run_scenario("kill", "--handler", handler)
    assert_within_held(r)
    assert r["reported_drops"] == r["counters"]["RcvbufErrors"] == 0


def test_slot_whose_worker_cannot_be_replaced_leaves_the_port_and_is_drained_later():
    assert_within_held(run_scenario("orphan_slot"))


def test_timeout_kills_a_stuck_handler_and_its_slot_carries_on():
    r = run_scenario("timeout")
    assert r["stack_logged"]
    assert_within_held(r)


@HANDLERS
def test_workers_recycled_after_max_packets_lose_nothing(handler):
    r = run_scenario("recycle", "--handler", handler)
    assert r["recycled"] >= 6
    # Replaced at 2,000, give or take the rest of the receive in hand.
    assert r["most_handled"] < 2000 + 64, r
    assert_exact(r)


@HANDLERS
def test_ttin_to_the_old_master_during_usr2_loses_nothing(handler):
    r = run_scenario("usr2_ttin", "--handler", handler)
    assert r["old_master_exits"] == [0]
    assert_exact(r)


def test_ttin_to_a_master_whose_sockets_were_taken_over_then_term_loses_nothing():
    r = run_scenario("takeover_ttin")
    assert r["first_exit"] == 0
    assert_exact(r)


@HANDLERS
def test_a_handler_that_always_raises_loses_nothing_across_hups(handler):
    r = run_scenario("raising", "--handler", handler)
    assert_exact(r)


def test_a_paused_master_does_not_kill_its_healthy_workers():
    r = run_scenario("pause_master")
    assert r["same_workers"] and r["killed"] == 0, r
    assert_exact(r)


def test_usr2_with_the_pid_files_disk_full_leaves_the_old_master_serving():
    r = run_scenario("usr2_full_disk")
    assert r["new_masters"] == 1
    assert r["old_master_serving"] and r["pid_file_names_old"]
    assert_exact(r)


@HANDLERS
def test_term_to_the_old_master_during_usr2_stops_the_service(handler):
    r = run_scenario("term_during_usr2", "--handler", handler)
    assert r["new_master_gone"] and r["leaked_processes"] == 0
    assert_exact(r)


def test_ttin_and_ttou_in_their_exact_form_each_count_in_a_burst():
    r = run_scenario("signal_burst")
    assert (r["workers_after_ttin"], r["workers_after_ttou"]) == (14, 2)
    assert_exact(r)


def test_port_514_served_by_workers_running_as_nobody():
    r = run_scenario("privileged", "--port", "514")
    assert r["worker_uids"] == [65534]
    assert r["old_master_exits"] == [0]
    assert_exact(r)


def test_one_flow_stays_whole_with_hash_steering():
    r = run_scenario("steer_hash")
    assert_exact(r)
    assert list(r["shares"][0].values()) == [1.0]


def test_spread_steering_deals_one_flow_over_every_worker_and_follows_ttin():
    r = run_scenario("steer_spread")
    assert_exact(r)
    two, three = r["shares"]
    assert len(two) == 2 and all(0.4 < share < 0.6 for share in two.values()), two
    assert len(three) == 3 and all(0.25 < share < 0.42 for share in three.values()), three


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_cpu_steering_gives_each_cpu_its_worker():
    r = run_scenario("steer_cpu")
    assert_exact(r)
    assert r["shares"] == [{"0": 1.0}, {"1": 1.0}]


def test_stuck_handler_does_not_stop_a_rolling_restart():
    r = run_scenario("stuck")
    assert r["stack_logged"]
    assert_within_held(r)


def test_worker_killed_while_draining_is_replaced_and_the_drain_finishes():
    assert_within_held(run_scenario("drain_kill"))


@HANDLERS
def test_chaos_of_signals_and_kills(handler):
    r = run_scenario("chaos", "--seconds", "20", "--handler", handler)
    assert sum(r["actions"].values()) > 10
    assert_within_held(r)
    assert 0 < r["kills"] <= r["actions"]["kill"]  # a kill may find its worker leaving anyway
    assert r["zombies"] == 0 and r["leaked_processes"] == 0 and r["tracebacks"] == 0
    assert r["descriptors_at_end"] == r["descriptors_at_start"]
