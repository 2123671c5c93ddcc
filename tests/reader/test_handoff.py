"""Descriptor handoff (SCM_RIGHTS, exec inheritance) and systemd integration."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from conftest import DEADLINE, collect, send
from harness import activator_env
from udp_reader import Reader, systemd
from udp_reader.handoff import (HandoffServer, export_for_exec, fetch_sockets,
                                private_path)


@pytest.fixture
def private_dir():
    with tempfile.TemporaryDirectory() as d:
        yield os.path.join(d, "run")


def serve_in_thread(server, socks):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("sent", server.serve_one(socks)))
    thread.start()
    return thread, result


def test_socket_passed_over_unix_socket_shares_the_queue(private_dir):
    path = private_path(private_dir)
    assert oct(os.stat(private_dir).st_mode & 0o777) == "0o700"
    with Reader("127.0.0.1:0") as reader, HandoffServer(path) as server:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        thread, result = serve_in_thread(server, [("metrics", reader.socket)])
        ((name, sock),) = fetch_sockets(path)
        thread.join(DEADLINE)
        assert result["sent"] and name == "metrics"
        send(reader.address, [b"one queue"])
        with Reader.from_socket(sock) as successor:
            assert collect(successor, 1) == [b"one queue"]
        sock.close()


def test_private_directory_must_be_closed_to_others(private_dir):
    os.makedirs(private_dir, mode=0o755)
    os.chmod(private_dir, 0o755)
    with pytest.raises(PermissionError, match="0700"):
        private_path(private_dir)


NOBODY = 65534


def fetch_as_nobody(path: str) -> str:
    """Try fetch_sockets(path) in a forked child running as nobody; returns
    what happened, in words."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, so root's private interpreter is no obstacle
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fetch_sockets(path, timeout=DEADLINE)
            outcome = "got sockets"
        except PermissionError as e:
            outcome = f"refused: {e}"
        except BaseException as e:
            outcome = f"failed: {e!r}"
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        outcome = f.read().decode()
    os.waitpid(pid, 0)
    return outcome


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a peer as another user")
def test_peer_of_another_user_is_refused(private_dir):
    path = private_path(private_dir)
    with Reader("127.0.0.1:0") as reader, HandoffServer(path) as server:
        # The directory keeps other users out...
        assert "Permission denied" in fetch_as_nobody(path)
        # ...and if someone opens it up, the peer credentials still do.
        os.chmod(os.path.dirname(private_dir), 0o755)
        os.chmod(private_dir, 0o755)
        os.chmod(path, 0o666)
        thread, sent = serve_in_thread(server, [("metrics", reader.socket)])
        outcome = fetch_as_nobody(path)
        thread.join(DEADLINE)
    assert sent["sent"] is False
    assert "refused: another user" in outcome


READ_INHERITED = """
from udp_reader import Reader
from udp_reader.handoff import import_inherited
((name, sock),) = import_inherited()
with Reader.from_socket(sock) as r:
    got = []
    r.run(lambda p: (got.append(p.data), r.stop()))
print(name, got[0].decode())
"""


def test_socket_inherited_across_exec():
    with Reader("127.0.0.1:0") as reader:
        send(reader.address, [b"inherited"])
        env = dict(os.environ)
        fds = export_for_exec([("udp", reader.socket)], env)
        result = subprocess.run([sys.executable, "-c", READ_INHERITED], env=env, pass_fds=fds,
                                capture_output=True, text=True, timeout=DEADLINE)
    assert result.stdout.split() == ["udp", "inherited"], result.stderr


ACTIVATED = """
import json
from udp_reader import Reader, systemd
socks = systemd.listen_fds()
name, sock = socks[0]
with Reader.from_socket(sock) as r:
    got = []
    r.run(lambda p: (got.append(p.data.decode()), r.stop()))
print(json.dumps([len(socks), name, got[0]]))
"""


def test_systemd_socket_activation():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        ["systemd-socket-activate", "--datagram", "-l", f"127.0.0.1:{port}",
         "--fdname=metrics", *activator_env(), sys.executable, "-c", ACTIVATED],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The activator binds, then starts the service on the first datagram.
        for _ in range(200):
            if f":{port:04X}" in open("/proc/net/udp").read():
                break
            threading.Event().wait(0.02)
        send(("127.0.0.1", port), [b"activated"])
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.strip(), err
    assert json.loads(out.strip().splitlines()[-1]) == [1, "metrics", "activated"], err


def test_listen_fds_ignores_another_process(monkeypatch):
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listen_fds() == []
    assert "LISTEN_FDS" not in os.environ


@pytest.mark.parametrize("abstract", [False, True])
def test_notify(monkeypatch, abstract):
    with tempfile.TemporaryDirectory() as d, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        if abstract:
            name = f"udp-reader-test-{os.getpid()}"
            manager.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            manager.bind(os.path.join(d, "notify"))
            monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(d, "notify"))
        assert systemd.notify("READY=1", "STATUS=serving")
        assert manager.recv(1024) == b"READY=1\nSTATUS=serving"
        assert systemd.notify_reloading()
        assert manager.recv(1024).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.notify("READY=1") is False


def test_notify_never_blocks_on_a_manager_that_stopped_reading(monkeypatch):
    with tempfile.TemporaryDirectory() as d, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(os.path.join(d, "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(d, "notify"))
        # The manager reads nothing: its queue fills, and then a message is
        # dropped rather than the sender kept waiting.
        sent = [systemd.notify(f"STATUS={i}") for i in range(5000)]
    assert sent[0] is True and sent[-1] is False


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to own files as another user")
def test_handoff_directory_another_user_could_swap_is_refused(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    link = tmp_path / "link"  # nobody's symlink to a private directory of ours
    link.symlink_to(private)
    os.lchown(link, NOBODY, NOBODY)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # anyone may rename what it holds
    for directory, words in ((link, "link belongs to uid 65534"),
                             (theirs / "run", "theirs belongs to uid 65534"),
                             (open_dir / "run", "open is writable by others")):
        with pytest.raises(PermissionError, match=words):
            private_path(str(directory))
    assert not (theirs / "run").exists()
    # A sticky directory (like /tmp) is fine: others cannot move our entries.
    os.chmod(open_dir, 0o1777)
    assert private_path(str(open_dir / "run")) == str(open_dir / "run" / "handoff.sock")


def test_handoff_socket_lands_in_the_directory_that_was_checked(tmp_path, monkeypatch):
    # The directory is swapped for a symlink to another one just before
    # the bind: the socket still lands in the directory that was checked,
    # and nothing in the other one is touched.
    directory, moved, victim = tmp_path / "run", tmp_path / "run.moved", tmp_path / "victim"
    victim.mkdir()
    path = private_path(str(directory))
    real_umask = os.umask

    def swap_then_umask(mask):
        if not os.path.islink(directory):
            os.rename(directory, moved)
            os.symlink(victim, directory)
        return real_umask(mask)

    monkeypatch.setattr(os, "umask", swap_then_umask)
    with HandoffServer(path):
        monkeypatch.setattr(os, "umask", real_umask)
        assert os.listdir(victim) == []
        assert os.listdir(moved) == ["handoff.sock"]
        assert oct(os.stat(moved / "handoff.sock").st_mode & 0o777) == "0o600"
    assert os.listdir(moved) == []
