"""A worker's keeper of its handler's state: taken when the worker gets its
slot, checkpointed, merged from the other slots, handed on when it leaves.

The handler's module defines, beside worker_start() and worker_stop():

    save_state(final: bool) -> bytes
        What the handler holds. final=False: a checkpoint, what the next
        worker starts from if this one dies. final=True: a hand-over; what
        it holds now belongs to the next worker, so worker_stop() must not
        flush it.
    restore_state(state: bytes) -> None
        Once, when the worker gets its turn to read (after worker_start(),
        before its first packet): what the slot's previous worker handed
        on, or its last checkpoint if it died.
    merge_state(state: bytes) -> None       (optional)
        The latest checkpoint of another slot, at the turn and whenever one
        changes: for state keyed by source that must follow a source to
        whichever slot now receives it (templates). Counts must not merge.

The keeper runs in the worker's main thread, between handler calls, never
beside one. The restore comes at the turn, not at start, because the
previous worker hands on only once its replacement is ready.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import ModuleType
from typing import Callable, Dict, Optional

from udp_reader.serve import state
from udp_reader.serve.state import StateError, StateFile

log = logging.getLogger("udp_reader")

SLOW = 0.25  # seconds; a save_state() longer than this stalls the socket: said once


class Keeper:
    def __init__(self, module: ModuleType, directory: str, slot: int, interval: float) -> None:
        self.save: Callable[[bool], bytes] = module.save_state
        self.restore: Callable[[bytes], None] = module.restore_state
        self.merge: Optional[Callable[[bytes], None]] = getattr(module, "merge_state", None)
        self.file = StateFile(directory, slot)
        self.interval = interval  # 0: only at the hand-over
        self.merged: Dict[int, Optional[int]] = {}  # other slot: inode merged last
        self.due = threading.Event()
        self._ticking = False
        self._tick_lock = threading.Lock()
        self._warned: set = set()

    @classmethod
    def for_module(cls, module: ModuleType, directory: Optional[str], slot: int,
                   interval: float) -> Optional["Keeper"]:
        """A keeper if the handler keeps state (save_state and restore_state)."""
        if directory is None or not (callable(getattr(module, "save_state", None))
                                     and callable(getattr(module, "restore_state", None))):
            return None
        return cls(module, directory, slot, interval)

    # -- the turn ------------------------------------------------------------------

    def take(self, claim: bool = True) -> None:
        """The worker reads from now on: restore what the slot's previous
        worker left, then claim the file, so a previous worker late in
        leaving sees it is no longer the slot's and flushes for itself.
        A worker that only drains a slot leaving the group does not claim it."""
        try:
            self._take(claim)
        except OSError as e:
            log.error("state of slot %d not read (%s); starting empty", self.file.slot, e)
        self.merge_others()

    def _take(self, claim: bool) -> None:
        with self.file.locked():
            try:
                found = self.file.read()
            except StateError as e:
                log.error("state of slot %d refused (%s); starting empty", self.file.slot, e)
                found = None
            if found is not None and not found.final and found.writer_alive:
                log.warning("slot %d: the previous worker %d is still leaving; it keeps its "
                            "state and this worker starts empty", self.file.slot, found.pid)
            elif found is not None and self._call(self.restore, found.payload, "restore_state"):
                log.info("slot %d: state restored (%d bytes)", self.file.slot,
                         len(found.payload))
            if claim:
                self._write(final=False)

    def start_ticking(self, wake: Callable[[], None]) -> None:
        """Every interval, mark a checkpoint due and wake the reader so the
        main thread takes it between handler calls."""
        if self.interval <= 0:
            return
        self._ticking = True

        def tick() -> None:
            while True:
                time.sleep(self.interval)
                with self._tick_lock:
                    if not self._ticking:
                        return
                    self.due.set()
                    wake()

        threading.Thread(target=tick, name="checkpoint", daemon=True).start()

    def stop_ticking(self) -> None:
        """No wake-up from now on: it would cut the leaving worker's drain short."""
        with self._tick_lock:
            self._ticking = False

    def tick(self) -> None:
        """A checkpoint and a look at the other slots, if due. Only while
        the slot's file is ours: once the next worker has claimed it (this
        one late in letting go), a checkpoint would overwrite its state."""
        if not self.due.is_set():
            return
        self.due.clear()
        try:
            with self.file.locked():
                if self.file.still_ours():
                    self._write(final=False)
        except OSError as e:
            self._warn_once(("lock", type(e)), "slot %d: checkpoint not written (%s)",
                            self.file.slot, e)
        self.merge_others()

    # -- leaving -------------------------------------------------------------------

    def hand_over(self) -> bool:
        """The last packet handled and someone follows (retire): write the
        final state for the next worker. False if this worker is no longer
        the slot's (its replacement already reads) or the write failed: the
        state is given back (restore_state), for worker_stop() to flush."""
        try:
            return self._hand_over()
        except OSError as e:  # the lock: nothing was saved, worker_stop() flushes
            log.error("slot %d: cannot hand the state on (%s); this worker flushes it",
                      self.file.slot, e)
            return False

    def _hand_over(self) -> bool:
        with self.file.locked():
            if not self.file.still_ours():
                log.warning("slot %d is no longer this worker's (it left the group, or the "
                            "next worker reads already); this worker flushes its own state",
                            self.file.slot)
                return False
            payload = self._save(final=True)
            if payload is None:
                return False
            try:
                self.file.write(payload, final=True)
                return True
            except (OSError, StateError) as e:
                log.error("slot %d: cannot hand the state on (%s); this worker flushes it",
                          self.file.slot, e)
        self._call(self.restore, payload, "restore_state")
        return False

    def after_stop(self) -> None:
        """Nobody follows (drain) and worker_stop() has flushed: what is left
        (templates, gauges) stays for a later start with --state-dir,
        unless the master forgot the slot (it left the group)."""
        if not self.file.still_ours():
            return  # not even locked: the lock file would outlive the slot
        try:
            with self.file.locked():
                if self.file.still_ours():
                    payload = self._save(final=False)
                    if payload is not None:
                        self._store(payload, final=True)
        except OSError as e:
            log.warning("slot %d: state not kept after the stop (%s)", self.file.slot, e)

    # -- the other slots -----------------------------------------------------------

    def merge_others(self) -> None:
        if self.merge is None:
            return
        try:
            names = os.listdir(self.file.directory)
        except OSError:
            return
        for name in names:
            slot = state.slot_of(name)
            if slot is None or slot == self.file.slot:
                continue
            other = StateFile(self.file.directory, slot)
            inode = other.inode()
            if inode is None or self.merged.get(slot) == inode:
                continue
            self.merged[slot] = inode
            try:
                found = other.read()
            except (StateError, OSError) as e:
                self._warn_once(("merge", slot, inode), "state of slot %d not merged (%s)",
                                slot, e)
                continue
            if found is not None:
                self._call(self.merge, found.payload, "merge_state")

    # -- the handler's calls and the file --------------------------------------------

    def _write(self, final: bool) -> None:
        payload = self._save(final)
        if payload is not None:
            self._store(payload, final)

    def _save(self, final: bool) -> Optional[bytes]:
        started = time.monotonic()
        try:
            payload = self.save(final)
        except Exception as e:
            self._warn_once(("raised", type(e)), "save_state() raised %s: %s; the last "
                            "checkpoint stays", type(e).__name__, e)
            return None
        took = time.monotonic() - started
        if took > SLOW:
            self._warn_once("slow", "save_state() took %.2f s (%d bytes); the socket waits "
                            "meanwhile: keep the state small or --checkpoint longer",
                            took, len(payload))
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            self._warn_once("type", "save_state() returned %s, not bytes; not saved",
                            type(payload).__name__)
            return None
        return bytes(payload)

    def _store(self, payload: bytes, final: bool) -> None:
        try:
            self.file.write(payload, final)
        except (OSError, StateError) as e:
            self._warn_once(("store", type(e)), "slot %d: checkpoint not written (%s); the "
                            "last one stays", self.file.slot, e)

    def _call(self, hook: Callable[[bytes], None], payload: bytes, name: str) -> bool:
        try:
            hook(payload)
            return True
        except Exception as e:
            log.error("slot %d: %s() refused the state (%s: %s); starting without it",
                      self.file.slot, name, type(e).__name__, e)
            return False

    def _warn_once(self, kind: object, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message, *args)
