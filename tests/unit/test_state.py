"""The handlers' state files (serve/state.py) and the worker's keeper of
them (serve/keeper.py), without processes: framing, refusal of a corrupt,
foreign or oversized state, atomic replacement, and the hand-over rules."""

from __future__ import annotations

import errno
import json
import os
import struct
import types
from typing import List

import pytest

from udp_reader.serve import state
from udp_reader.serve.config import Config
from udp_reader.serve.group import Group
from udp_reader.serve.keeper import Keeper
from udp_reader.serve.slots import Slot
from udp_reader.serve.state import HEADER, MAX_STATE, StateError, StateFile


def test_a_frame_round_trips_and_says_who_wrote_it():
    frame = state.unframe(state.frame(b"templates", final=True))
    assert frame.payload == b"templates"
    assert frame.final and frame.pid == os.getpid() and frame.boot == state.BOOT_ID
    assert not state.unframe(state.frame(b"", final=False)).final


@pytest.mark.parametrize("damage, why", [
    (lambda d: d[:HEADER.size - 1], "shorter than the header"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d + b"x", "truncated"),
    (lambda d: b"XXXX" + d[4:], "wrong magic"),
    (lambda d: d[:4] + struct.pack("!H", 99) + d[6:], "version 99"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum"),
])
def test_a_damaged_frame_is_refused_saying_why(damage, why):
    with pytest.raises(StateError, match=why):
        state.unframe(damage(state.frame(b"some state", final=False)))


def test_a_frame_claiming_more_than_the_cap_is_refused_before_reading_it():
    header = HEADER.pack(state.MAGIC, state.VERSION, 0, 1, bytes(16), MAX_STATE + 1, 0)
    with pytest.raises(StateError, match="more than the limit"):
        state.unframe(header)


def test_a_file_claiming_more_than_the_cap_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "MAX_STATE", 10)
    f = StateFile(str(tmp_path), 0)
    with open(f.path, "wb") as out:
        out.write(HEADER.pack(state.MAGIC, state.VERSION, 0, 1, bytes(16), 11, 0) + b"x" * 11)
    with pytest.raises(StateError, match="says 11 bytes, more than the limit of 10"):
        f.read()


def test_a_state_over_the_cap_is_not_written(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "MAX_STATE", 10)
    f = StateFile(str(tmp_path), 0)
    f.write(b"small", final=False)
    with pytest.raises(StateError, match="more than the limit of 10"):
        f.write(b"x" * 11, final=False)
    assert f.read().payload == b"small"  # the previous one stays


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    f = StateFile(str(tmp_path), 3)
    assert f.read() is None
    f.write(b"one", final=False)
    first = os.stat(f.path).st_ino
    f.write(b"two", final=True)
    assert f.read() == (b"two", True, os.getpid(), state.BOOT_ID)
    assert os.stat(f.path).st_ino != first  # renamed over, never rewritten in place
    assert sorted(os.listdir(tmp_path)) == ["slot-3.state"]


def test_a_failed_write_keeps_the_previous_state_and_no_temporary(tmp_path, monkeypatch):
    f = StateFile(str(tmp_path), 0)
    f.write(b"before", final=False)

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        f.write(b"after", final=False)
    monkeypatch.undo()
    assert f.read().payload == b"before"
    assert sorted(os.listdir(tmp_path)) == ["slot-0.state"]


def test_the_master_forgets_a_slot_and_only_that_slot(tmp_path):
    for slot in (0, 1):
        StateFile(str(tmp_path), slot).write(b"s", final=False)
    state.forget(str(tmp_path), 1)
    state.forget(None, 0)  # no directory: nothing to do
    assert [state.slot_of(n) for n in os.listdir(tmp_path)] == [0]
    assert state.slot_of("slot-x.state") is None and state.slot_of(".slot-1.tmp") is None


class OnThePort:
    """A socket in the port's group (listeners.Listener's surface Group uses)."""
    unbound = None
    shed = False

    def leave_group(self) -> None:
        self.shed = True


def test_a_slot_leaving_the_group_takes_its_state_with_it(tmp_path):
    group = Group(Config(handler="h:h", bind="127.0.0.1:9", workers=3))
    group.state_dir = str(tmp_path)
    group.slots = [Slot(i, OnThePort()) for i in range(3)]  # type: ignore[arg-type]
    for i in range(3):
        StateFile(str(tmp_path), i).write(b"s", final=False)
    group.target = 1  # TTOU twice
    group.resize(leave_by=0.0, dismiss_by=0.0)
    assert [s.index for s in group.drains] == [2, 1]
    assert sorted(os.listdir(tmp_path)) == ["slot-0.state"]


def test_a_made_directory_is_private(tmp_path):
    directory = state.make_dir(None)
    try:
        assert os.stat(directory).st_mode & 0o777 == 0o700
    finally:
        state.remove_dir(directory)
    assert not os.path.exists(directory)


# -- the keeper ---------------------------------------------------------------------


class Counts:
    """A handler module: a count it hands on; what it was told, in order."""

    def __init__(self, merges: bool = False) -> None:
        self.count = 0
        self.calls: List[str] = []
        self.module = types.ModuleType("counts")
        self.module.save_state = self.save_state
        self.module.restore_state = self.restore_state
        if merges:
            self.module.merge_state = self.merge_state

    def save_state(self, final: bool) -> bytes:
        self.calls.append(f"save {final}")
        return json.dumps(self.count).encode()

    def restore_state(self, data: bytes) -> None:
        self.calls.append("restore")
        self.count += json.loads(data)

    def merge_state(self, data: bytes) -> None:
        self.calls.append(f"merge {json.loads(data)}")


def keeper(tmp_path, handler: Counts, slot: int = 0) -> Keeper:
    k = Keeper.for_module(handler.module, str(tmp_path), slot, 1.0)
    assert k is not None
    return k


def test_a_handler_without_both_hooks_or_without_a_directory_keeps_nothing(tmp_path):
    module = types.ModuleType("plain")
    assert Keeper.for_module(module, str(tmp_path), 0, 1.0) is None
    assert Keeper.for_module(Counts().module, None, 0, 1.0) is None


def test_the_count_passes_from_worker_to_worker(tmp_path):
    old, new = Counts(), Counts()
    first = keeper(tmp_path, old)
    first.take()
    old.count = 7
    assert first.hand_over()
    keeper(tmp_path, new).take()
    assert new.count == 7 and new.calls == ["restore", "save False"]
    assert old.calls == ["save False", "save True"]


def test_a_dead_workers_checkpoint_is_restored(tmp_path):
    StateFile(str(tmp_path), 0).write(b"5", final=False)
    with open(os.path.join(tmp_path, "slot-0.state"), "r+b") as f:  # a pid no process has
        f.seek(8)
        f.write(struct.pack("!I", 0x7FFFFFF0))
    handler = Counts()
    keeper(tmp_path, handler).take()
    assert handler.count == 5


def test_a_live_predecessors_checkpoint_is_not_restored_and_it_flushes_itself(tmp_path):
    """The old worker was late in letting go: the new one reads already. It
    must not count what the old one still holds, and the old one, seeing
    the slot is no longer its own, does not hand on (its worker_stop flushes)."""
    old, new = Counts(), Counts()
    first = keeper(tmp_path, old)
    first.take()
    old.count = 3
    first.tick()  # nothing due
    first.due.set()
    first.tick()  # a checkpoint of 3
    # The new worker's frame is read as another live process's: this one's parent.
    with open(os.path.join(tmp_path, "slot-0.state"), "r+b") as f:
        f.seek(8)
        f.write(struct.pack("!I", os.getppid()))
    keeper(tmp_path, new).take()
    assert new.count == 0 and "restore" not in new.calls
    claimed = os.stat(os.path.join(tmp_path, "slot-0.state")).st_ino
    first.due.set()
    first.tick()  # the late one's checkpoint would overwrite the new one's state
    assert os.stat(os.path.join(tmp_path, "slot-0.state")).st_ino == claimed
    assert not first.hand_over()
    assert "save True" not in old.calls


def test_a_hand_over_that_cannot_be_written_is_given_back(tmp_path, monkeypatch):
    handler = Counts()
    k = keeper(tmp_path, handler)
    k.take()
    handler.count = 4
    monkeypatch.setattr(state, "MAX_STATE", 0)
    assert not k.hand_over()
    assert handler.calls[-2:] == ["save True", "restore"]  # for worker_stop() to flush


def test_a_corrupt_state_is_refused_and_the_worker_starts_empty(tmp_path, caplog):
    with open(os.path.join(tmp_path, "slot-2.state"), "wb") as f:
        f.write(b"URST garbage")
    handler = Counts()
    keeper(tmp_path, handler, slot=2).take()
    assert handler.count == 0 and "restore" not in handler.calls
    assert "state of slot 2 refused (12 bytes, shorter than the header" in caplog.text


def test_a_restore_that_raises_leaves_the_worker_serving(tmp_path, caplog):
    StateFile(str(tmp_path), 0).write(b"not json", final=True)
    handler = Counts()
    keeper(tmp_path, handler).take()
    assert handler.count == 0
    assert "restore_state() refused the state" in caplog.text


def test_other_slots_are_merged_once_per_change_and_never_our_own(tmp_path):
    a, b = Counts(merges=True), Counts(merges=True)
    ka, kb = keeper(tmp_path, a, 0), keeper(tmp_path, b, 1)
    ka.take()
    b.count = 2
    kb.take()
    assert "merge 0" in b.calls  # slot 0's, at b's turn
    ka.merge_others()
    ka.merge_others()
    assert [c for c in a.calls if c.startswith("merge")] == ["merge 2"]
    b.count = 9
    kb.due.set()
    kb.tick()
    ka.merge_others()
    assert [c for c in a.calls if c.startswith("merge")] == ["merge 2", "merge 9"]


def test_a_drained_slot_leaves_its_state_only_if_the_master_kept_it(tmp_path):
    handler = Counts()
    k = keeper(tmp_path, handler)
    k.take()
    handler.count = 6
    k.after_stop()
    assert StateFile(str(tmp_path), 0).read() == (b"6", True, os.getpid(), state.BOOT_ID)
    state.forget(str(tmp_path), 0)  # TTOU: the slot left the group
    k.after_stop()
    assert StateFile(str(tmp_path), 0).read() is None


def test_a_full_disk_costs_a_checkpoint_with_one_warning_and_keeps_the_last(tmp_path, caplog,
                                                                           monkeypatch):
    handler = Counts()
    k = keeper(tmp_path, handler)
    k.take()
    handler.count = 1
    k.due.set()
    k.tick()

    def full(self, payload, final):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(StateFile, "write", full)
    for count in (2, 3):
        handler.count = count
        k.due.set()
        k.tick()
    monkeypatch.undo()
    assert caplog.text.count("checkpoint not written ([Errno 28] No space left") == 1
    assert StateFile(str(tmp_path), 0).read().payload == b"1"
