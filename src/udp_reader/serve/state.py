"""The handlers' state on disk: one file per slot in a private directory.

A worker writes its handler's state (keeper.py says when) to its slot's
file; the worker that takes the slot next reads it. The bytes are the
handler's; the frame around them is ours: a header (magic, version, flags,
the writer's pid and boot, length, CRC32) so that a truncated, corrupt or
foreign file is refused before the handler sees it.

    "URST" | version u16 | flags u16 | pid u32 | boot id 16 | length u64 | crc32 u32

A file is written whole to a temporary name beside it and renamed over the
path, so a reader sees the old state or the new, never half. It is not
synced: it must outlive a process, not the machine (a reboot is a full stop).

The master only makes the directory (mode 0700, the workers' own with
--user), passes it on across USR2 and forgets a slot that leaves the group
(forget): it never reads a state, so a large one never blocks its loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import tempfile
import zlib
from typing import Iterator, NamedTuple, Optional

from udp_reader.serve import privileges

MAGIC = b"URST"
VERSION = 1
FINAL = 0x1  # written at a hand-over or after the last packet, not at a checkpoint
HEADER = struct.Struct("!4sHHI16sQI")
MAX_STATE = 64 << 20  # bytes a handler may keep: a state is read whole into memory
SUFFIX = ".state"


class StateError(ValueError):
    """A state refused: corrupt, foreign or too large; says why in one line."""


def _boot_id() -> bytes:
    """This boot's id: a pid names a live process only within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read().strip().decode().replace("-", ""))[:16]
    except (OSError, ValueError):
        return bytes(16)


BOOT_ID = _boot_id()


class Frame(NamedTuple):
    payload: bytes
    final: bool   # the writer handed it on (or left) rather than checkpointed
    pid: int      # the worker that wrote it
    boot: bytes   # the boot it ran in

    @property
    def writer_alive(self) -> bool:
        """The worker that wrote it still runs (it is late in leaving)."""
        if self.boot != BOOT_ID or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def frame(payload: bytes, final: bool) -> bytes:
    """The handler's bytes with our header before them. StateError if too large."""
    if len(payload) > MAX_STATE:
        raise StateError(f"{len(payload)} bytes, more than the limit of {MAX_STATE}")
    return HEADER.pack(MAGIC, VERSION, FINAL if final else 0, os.getpid(), BOOT_ID,
                       len(payload), zlib.crc32(payload)) + payload


def unframe(data: bytes) -> Frame:
    """What frame() wrote; StateError, saying why, for anything else."""
    if len(data) < HEADER.size:
        raise StateError(f"{len(data)} bytes, shorter than the header ({HEADER.size})")
    magic, version, flags, pid, boot, length, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateError("not a state file (wrong magic)")
    if version != VERSION:
        raise StateError(f"format version {version}, this server reads {VERSION}")
    if length > MAX_STATE:
        raise StateError(f"says {length} bytes, more than the limit of {MAX_STATE}")
    payload = data[HEADER.size:]
    if len(payload) != length:
        raise StateError(f"truncated: {len(payload)} of {length} bytes")
    if zlib.crc32(payload) != crc:
        raise StateError("corrupt: the checksum does not match")
    return Frame(payload, bool(flags & FINAL), pid, boot)


class StateFile:
    """One slot's state file, and the lock that orders a hand-over."""

    def __init__(self, directory: str, slot: int) -> None:
        self.directory = directory
        self.slot = slot
        self.path = path_for(directory, slot)
        self.written: Optional[int] = None  # the inode we wrote last: still ours?

    def read(self) -> Optional[Frame]:
        """The state in the file, None if there is none. StateError if refused."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(HEADER.size)
                # What the header says, within the cap, and a byte more to
                # catch a longer file: an oversized one is never read whole.
                if len(data) == HEADER.size:
                    data += f.read(min(HEADER.unpack_from(data)[5], MAX_STATE) + 1)
        except FileNotFoundError:
            return None
        return unframe(data)

    def write(self, payload: bytes, final: bool) -> None:
        """Replace the file whole. StateError if too large, OSError (a full
        disk) with the file as it was."""
        data = frame(payload, final)
        fd, tmp = tempfile.mkstemp(prefix=".slot-", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.written = os.stat(self.path).st_ino

    def inode(self) -> Optional[int]:
        try:
            return os.stat(self.path).st_ino
        except FileNotFoundError:
            return None

    def still_ours(self) -> bool:
        """Nobody wrote or removed the file since we last wrote it (or read
        it, when we never wrote)."""
        return self.written is not None and self.inode() == self.written

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held while a worker takes the slot's state, or hands it on, so
        the two never cross (each holds it for one file's read or write)."""
        fd = os.open(self.path[:-len(SUFFIX)] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def path_for(directory: str, slot: int) -> str:
    return os.path.join(directory, f"slot-{slot}{SUFFIX}")


def slot_of(name: str) -> Optional[int]:
    """The slot a file in the directory is for, None if it is no state file."""
    number = name[len("slot-"):-len(SUFFIX)]
    if name.startswith("slot-") and name.endswith(SUFFIX) and number.isdigit():
        return int(number)
    return None


# -- the master's part -------------------------------------------------------------


def make_dir(credentials: Optional[privileges.Credentials]) -> str:
    """A fresh private directory for this server's states (removed at its
    final stop): mode 0700, the workers' own when they run as another user."""
    directory = tempfile.mkdtemp(prefix="udp-reader-state-")
    own(directory, credentials)
    return directory


def own(directory: str, credentials: Optional[privileges.Credentials]) -> None:
    """Make an existing --state-dir the workers' (mode 0700). OSError."""
    os.chmod(directory, 0o700)
    if credentials is not None:
        os.chown(directory, credentials.uid, credentials.gid)


def forget(directory: Optional[str], slot: int) -> None:
    """A slot left the group: its state goes with it, so a slot of the
    same number added later (TTIN) starts empty."""
    if directory is not None:
        for path in (path_for(directory, slot), path_for(directory, slot)[:-len(SUFFIX)]
                     + ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def remove_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
