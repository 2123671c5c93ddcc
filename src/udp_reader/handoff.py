"""Handing a UDP socket from one process to another: its descriptor passed
on, by inheritance across exec or over a private Unix socket (SCM_RIGHTS).
One queue, nothing to drain: the old process just stops reading. (Separate
sockets in one SO_REUSEPORT group hand over by shedding instead: see
udp_reader.sockets.shed.)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
from typing import List, MutableMapping, Optional, Sequence, Tuple

log = logging.getLogger("udp_reader")

# How many descriptors and how much name text one handoff may carry.
MAX_FDS = 64
MAX_MESSAGE = 64 * 1024


# -- descriptor passing over a private Unix socket ------------------------------

MAX_SYMLINKS = 40  # as the kernel allows in one path


def private_path(directory: str, name: str = "handoff.sock") -> str:
    """A socket path inside `directory` (created mode 0700 if missing),
    once open_private_dir() found it safe."""
    os.close(open_private_dir(directory))
    return os.path.join(directory, name)


def open_private_dir(directory: str) -> int:
    """A descriptor of `directory`, created mode 0700 if missing, reached one
    component at a time, symlinks resolved by hand: each directory and link
    on the way must be root's or ours and not writable by another user
    (unless sticky, like /tmp: there others cannot move our entries), and the
    last one ours and mode 0700. So no other user can swap any part of the
    path, before or after this check. PermissionError says what is wrong."""
    todo = [p for p in os.path.abspath(directory).split("/") if p]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    where, links = "/", 0
    try:
        _check_component(directory, where, os.fstat(fd), last=False)
        while todo:
            part = todo.pop(0)
            where = os.path.join(where, part)
            try:
                info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                _check_component(directory, where, info, last=False)
                links += 1
                if links > MAX_SYMLINKS:
                    raise PermissionError(f"{directory}: too many symbolic links")
                target = os.readlink(part, dir_fd=fd)
                todo[:0] = [p for p in target.split("/") if p]
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    where = "/"
                else:
                    where = os.path.dirname(where)
                continue
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=fd)
            os.close(fd)
            fd = child
            _check_component(directory, where, os.fstat(fd), last=not todo)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_component(directory: str, where: str, info: os.stat_result, last: bool) -> None:
    uid = os.getuid()
    if last:
        if info.st_uid != uid or stat.S_IMODE(info.st_mode) & 0o077:
            raise PermissionError(
                f"{directory}: handoff directory must be owned by uid {uid} "
                f"and closed to others (mode 0700)")
    elif info.st_uid not in (0, uid):
        raise PermissionError(f"{directory}: {where} belongs to uid {info.st_uid}, "
                              "who could swap it")
    elif not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o022 \
            and not info.st_mode & stat.S_ISVTX:
        raise PermissionError(f"{directory}: {where} is writable by others, "
                              "who could swap what it holds")


class HandoffServer:
    """Offers sockets to processes of the same user over a Unix socket.

    Each connecting peer's credentials (SO_PEERCRED) are checked; a peer of
    another user is refused without a descriptor. The socket file is mode
    0600 inside a private directory (open_private_dir).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # Everything through a descriptor of the checked directory (bind
        # by its /proc/self/fd name): nothing a path swap could redirect.
        self._dir = open_private_dir(os.path.dirname(path) or ".")
        self._name = os.path.basename(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # Bound under a name of our own, then renamed over `path`: the path
        # always leads to a live server, the old one's until ours is ready.
        fresh = f"{self._name}.{os.getpid()}.new"
        try:
            try:
                os.unlink(fresh, dir_fd=self._dir)
            except FileNotFoundError:
                pass
            old_umask = os.umask(0o177)  # born mode 0600: no chmod by name
            try:
                self._listener.bind(f"/proc/self/fd/{self._dir}/{fresh}")
            finally:
                os.umask(old_umask)
            self._inode = os.stat(fresh, dir_fd=self._dir, follow_symlinks=False).st_ino
            self._listener.listen(8)
            os.replace(fresh, self._name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except BaseException:
            self._listener.close()
            try:
                os.unlink(fresh, dir_fd=self._dir)
            except FileNotFoundError:
                pass
            os.close(self._dir)
            raise

    def fileno(self) -> int:
        return self._listener.fileno()

    def serve_one(self, socks: Sequence[Tuple[str, socket.socket]],
                  timeout: float = 5.0) -> bool:
        """Accept one peer (waiting at most `timeout` seconds) and send it
        `socks` (name, socket). Returns True if they were sent, False if the
        peer was refused."""
        conn = self.accept_one(socks, timeout)
        if conn is None:
            return False
        conn.close()
        return True

    def accept_one(self, socks: Sequence[Tuple[str, socket.socket]],
                   timeout: float = 5.0) -> Optional[socket.socket]:
        """serve_one(), keeping the connection open: it says, by closing,
        when the peer is gone. None if the peer was refused."""
        self._listener.settimeout(timeout)
        conn, _ = self._listener.accept()
        try:
            conn.settimeout(timeout)
            pid, uid, _ = peer_credentials(conn)
            if uid != os.getuid():
                log.warning("handoff refused to pid %d of uid %d", pid, uid)
                conn.sendall(json.dumps({"error": "refused: another user"}).encode())
                conn.close()
                return None
            message = json.dumps({"names": [name for name, _ in socks]}).encode()
            socket.send_fds(conn, [message], [s.fileno() for _, s in socks])
        except BaseException:
            conn.close()
            raise
        log.info("handed %d socket(s) to pid %d", len(socks), pid)
        return conn

    def close(self) -> None:
        if self._dir < 0:
            return
        self._listener.close()
        try:
            # A successor may have bound the path anew: leave its socket be.
            if os.stat(self._name, dir_fd=self._dir, follow_symlinks=False).st_ino == self._inode:
                os.unlink(self._name, dir_fd=self._dir)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._dir)
            self._dir = -1

    def __enter__(self) -> "HandoffServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def peer_credentials(conn: socket.socket) -> Tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def fetch_sockets(path: str, timeout: float = 5.0) -> List[Tuple[str, socket.socket]]:
    """Ask the HandoffServer at `path` for its sockets: [(name, socket)]."""
    conn, socks = take_sockets(path, timeout)
    conn.close()
    return socks


def take_sockets(path: str, timeout: float = 5.0
                 ) -> Tuple[socket.socket, List[Tuple[str, socket.socket]]]:
    """fetch_sockets(), keeping the connection open: closing it tells the
    server (HandoffServer.accept_one) that we are gone."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(timeout)
        try:
            conn.connect(path)
        except OSError as e:
            raise type(e)(e.errno, f"no handoff at {path}: {e.strerror}") from None
        message, fds, flags, _ = socket.recv_fds(conn, MAX_MESSAGE, MAX_FDS)
        socks = [socket.socket(fileno=fd) for fd in fds]
        try:
            if flags & socket.MSG_CTRUNC:
                raise OSError(f"{path}: more descriptors than {MAX_FDS} were offered")
            reply = json.loads(message or b"{}")
            if "error" in reply:
                raise PermissionError(f"{path}: {reply['error']}")
            names = reply.get("names", [])
            if len(names) != len(socks):
                raise OSError(f"{path}: {len(socks)} descriptors for {len(names)} names")
        except BaseException:
            for s in socks:
                s.close()
            raise
    except BaseException:
        conn.close()
        raise
    return conn, list(zip(names, socks))


# -- inheritance across exec ---------------------------------------------------

INHERIT_ENV = "UDP_READER_FDS"


def export_for_exec(socks: Sequence[Tuple[str, socket.socket]],
                    env: MutableMapping[str, str]) -> List[int]:
    """Mark sockets inheritable and describe them in `env` for a child that
    will exec; returns the descriptors to keep open across the exec."""
    fds = []
    for _, s in socks:
        s.set_inheritable(True)
        fds.append(s.fileno())
    env[INHERIT_ENV] = json.dumps([[name, s.fileno()] for name, s in socks])
    return fds


def import_inherited(env: MutableMapping[str, str] = os.environ
                     ) -> List[Tuple[str, socket.socket]]:
    """Sockets an exec'ing parent left us through export_for_exec()."""
    text = env.pop(INHERIT_ENV, None)
    if not text:
        return []
    out = []
    for name, fd in json.loads(text):
        s = socket.socket(fileno=fd)
        s.set_inheritable(False)
        out.append((name, s))
    return out


