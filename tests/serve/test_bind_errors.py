"""`serve` finds a bind that must fail before any handler code runs.

The master binds a slot's socket only once its worker is ready (a bound
socket joins the port's SO_REUSEPORT group at once), so each reason a bind
fails is found beforehand without binding: a port someone holds, an address
the host lacks, a privileged port. The handler here writes a marker file in
worker_start(): no marker, no handler code ran."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from conftest import DEADLINE, NOBODY, free_port, root_only, wait_until_bound
from harness import wait_until
from udp_reader.serve import statusfile

HANDLER = """\
import os


def worker_start():
    open(os.environ["MARKER"], "w").close()


def on_packet(packet):
    pass
"""


@pytest.fixture
def marker_dir(tmp_path):
    (tmp_path / "marker_handler.py").write_text(HANDLER)
    return tmp_path


def serve_command(bind: str) -> list:
    return [sys.executable, "-m", "udp_reader", "serve", "marker_handler:on_packet",
            "--bind", bind]


def serve_env(marker_dir) -> dict:
    return dict(os.environ, PYTHONPATH=str(marker_dir), MARKER=str(marker_dir / "started"))


def refused(command: list, marker_dir) -> str:
    """Run a serve that must be refused; its one line."""
    result = subprocess.run(command, env=serve_env(marker_dir), capture_output=True,
                            text=True, timeout=DEADLINE)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert not (marker_dir / "started").exists(), "the handler ran before the bind error"
    return line



@pytest.mark.parametrize("host", ["", "127.0.0.1", "0.0.0.0"])
def test_a_port_held_without_reuseport(marker_dir, host):
    if shutil.which("socat") is None:
        pytest.fail("socat is missing: .ci/run installs it")
    port = free_port()
    socat = subprocess.Popen(["socat", "-u", f"UDP4-RECV:{port}", "/dev/null"],
                             env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    try:
        wait_until_bound(port)
        line = refused(serve_command(f"{host}:{port}"), marker_dir)
    finally:
        socat.kill()
        socat.wait()
    where = f"[::]:{port}" if not host else f"{host}:{port}"
    assert line == (f"udp-reader: error: cannot bind {where}: Address already in use "
                    f"(socat (pid {socat.pid}) holds 0.0.0.0:{port} without SO_REUSEPORT)")


@root_only
def test_a_port_held_by_another_user(marker_dir):
    # Even with SO_REUSEPORT: the kernel shares a port only within one user.
    port = free_port()
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)  # so the parent's close ends the read below
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            os.write(ready_w, b"x")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        assert os.read(ready_r, 1) == b"x"
        line = refused(serve_command(f"127.0.0.1:{port}"), marker_dir)
    finally:
        os.close(done_w)
        os.waitpid(pid, 0)
        os.close(ready_r)
    assert line.startswith(f"udp-reader: error: cannot bind 127.0.0.1:{port}: Address already "
                           "in use (")
    assert line.endswith(f" of uid {NOBODY} holds 127.0.0.1:{port})")


@root_only
def test_an_address_the_host_does_not_have(marker_dir):
    # Only inside a namespace of our own: no packet leaves for 1.2.3.4. Its
    # lo is up: before that, with no local table, the kernel binds any address.
    line = refused(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                    *serve_command("1.2.3.4:9000")], marker_dir)
    assert line == "udp-reader: error: cannot bind 1.2.3.4:9000: Cannot assign requested address"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_a_privileged_port_without_permission(marker_dir):
    # Root without CAP_NET_BIND_SERVICE is refused a port below 1024, as a user is.
    line = refused(["setpriv", "--bounding-set=-net_bind_service",
                    "--inh-caps=-net_bind_service", *serve_command("127.0.0.1:514")],
                   marker_dir)
    assert line == ("udp-reader: error: cannot bind 127.0.0.1:514: Permission denied "
                    "(ports below 1024 need root or CAP_NET_BIND_SERVICE)")


def test_a_reuseport_group_of_the_same_user_is_joined(marker_dir):
    # Not every socket on the port is a refusal: a group of ours is shared.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ours:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        ours.bind(("127.0.0.1", 0))
        port = ours.getsockname()[1]
        pid_file = str(marker_dir / "serve.pid")
        proc = subprocess.Popen([*serve_command(f"127.0.0.1:{port}"), "--pid-file", pid_file],
                                env=serve_env(marker_dir), stderr=subprocess.PIPE, text=True)
        try:
            # Serving (its status file is written), unless it was refused.
            wait_until(lambda: proc.poll() is not None
                       or os.path.exists(statusfile.path_for(pid_file)), DEADLINE)
            assert proc.poll() is None, proc.communicate()[1]
            assert statusfile.read(pid_file)["phase"] == "running"
            assert (marker_dir / "started").exists()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0
