"""`udp-reader serve --metrics`: Prometheus metrics from the master, scraped
over loopback from real servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import DEADLINE, send
from harness import snapshot
from server import Server, handled, serving

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from udp_reader.serve import statusfile  # noqa: E402


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_url(server: Server) -> str:
    """Where the master serves its metrics (its snapshot says)."""
    return server.status()["metrics"]


def scrape(url: str) -> dict:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_metrics_count_what_was_sent_and_agree_with_status_file_and_log(record_dir):
    n = 600
    pid_file = os.path.join(record_dir, "serve.pid")
    server = Server("recorder:on_packet", "--workers", "2", "--metrics", "127.0.0.1:0",
                    "--pid-file", pid_file, record_dir=record_dir)
    try:
        url = metrics_url(server)
        # From 12 source ports, so both slots are likely to get some.
        for flow in range(12):
            send(("127.0.0.1", server.port),
                 [i.to_bytes(8, "little") for i in range(flow, n, 12)])
        deadline = time.monotonic() + DEADLINE
        while handled(record_dir) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handled(record_dir) == n
        # The master publishes what its workers report about once a second.
        while time.monotonic() < deadline:
            samples = scrape(url)
            if total(samples, "udp_reader_delivered_total") >= n:
                break
            time.sleep(0.1)
        assert total(samples, "udp_reader_received_total") == n
        assert total(samples, "udp_reader_delivered_total") == n
        assert total(samples, "udp_reader_filtered_total") == 0
        assert total(samples, "udp_reader_handler_errors_total") == 0
        assert total(samples, "udp_reader_received_bytes_total") == 8 * n
        assert total(samples, "udp_reader_worker_delivered_total") == n
        assert total(samples, "udp_reader_kernel_drops_total") == 0
        assert samples[("udp_reader_worker_starts_total", ())] == 2
        assert samples[("udp_reader_workers", ())] == 2
        assert samples[("udp_reader_phase", (("phase", "running"),))] == 1
        for slot in ("0", "1"):
            assert samples[("udp_reader_slot_state",
                            (("slot", slot), ("state", "serving")))] == 1
            assert samples[("udp_reader_slot_state",
                            (("slot", slot), ("state", "no reader")))] == 0
            assert ("udp_reader_queued_bytes", (("slot", slot),)) in samples
        worker_pids = {dict(labels)["pid"] for (name, labels) in samples
                       if name == "udp_reader_worker_state"}
        ready = {str(pid) for pid, _ in server.workers()}
        assert worker_pids == ready and len(ready) == 2
        # The status file tells the same, counted the same way.
        snapshot = statusfile.read(pid_file)
        assert sum(s["totals"]["received"] for s in snapshot["slots"]) == n
        assert sum(s["totals"]["delivered"] for s in snapshot["slots"]) == n
    finally:
        code = server.stop()
    assert code == 0
    assert any(f"metrics on {url}" in l for l in server.lines)
    assert any(f"stopped: {n} received, {n} delivered" in l for l in server.lines)


def test_metrics_of_a_crashed_worker_stay_counted_in_its_slot(record_dir):
    server = Server("recorder:on_packet", "--metrics", "127.0.0.1:0", record_dir=record_dir)
    try:
        url = metrics_url(server)
        send(("127.0.0.1", server.port), [i.to_bytes(8, "little") for i in range(100)])
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and total(
                scrape(url), "udp_reader_delivered_total") < 100:
            time.sleep(0.1)
        [(pid, _)] = server.workers()
        os.kill(pid, signal.SIGKILL)
        server.status(lambda s: s["events"].get("exits_crashed") == 1 and serving(1)(s))
        send(("127.0.0.1", server.port), [i.to_bytes(8, "little") for i in range(100, 150)])
        while time.monotonic() < deadline:
            samples = scrape(url)
            if total(samples, "udp_reader_delivered_total") >= 150:
                break
            time.sleep(0.1)
        # Cumulative per slot across the replacement; the new worker counts its own.
        assert samples[("udp_reader_delivered_total", (("slot", "0"),))] == 150
        assert total(samples, "udp_reader_worker_delivered_total") == 50
        assert samples[("udp_reader_worker_exits_total", (("cause", "crashed"),))] == 1
        assert samples[("udp_reader_worker_starts_total", ())] == 2
    finally:
        assert server.stop() == 0


def test_metrics_survive_an_upgrade_on_the_same_port(record_dir):
    # USR2 starts a new master with the same command line: it must be able to
    # bind the metrics port the old master still serves.
    port = free_tcp_port()
    pid_file = os.path.join(record_dir, "serve.pid")
    server = Server("recorder:on_packet", "--metrics", f"127.0.0.1:{port}",
                    "--pid-file", pid_file, record_dir=record_dir)
    try:
        url = metrics_url(server)
        [(old_worker, _)] = server.workers()
        old_worker = str(old_worker)
        assert ("udp_reader_worker_state", (("pid", old_worker), ("slot", "0"),
                                            ("state", "serving"))) in scrape(url)
        server.proc.send_signal(signal.SIGUSR2)
        assert server.proc.wait(DEADLINE) == 0  # the old master left: the new one is ready
        new = snapshot(pid_file, lambda s: s["pid"] != server.proc.pid)
        assert new["metrics"] == f"http://127.0.0.1:{port}/metrics"
        assert not any("in use" in l for l in server.lines)
        new_worker = str(new["slots"][0]["workers"][0]["pid"])
        assert new_worker != old_worker
        samples = scrape(url)  # the new master answers
        assert samples[("udp_reader_phase", (("phase", "running"),))] == 1
        pids = {dict(labels)["pid"] for (name, labels) in samples
                if name == "udp_reader_worker_state"}
        assert pids == {new_worker}
    finally:
        # The new master, if any, is ours to stop (before the old one's
        # log can end: it writes to the same stderr).
        try:
            with open(pid_file) as f:
                new_master = int(f.read())
        except (OSError, ValueError):
            new_master = None
        if new_master is not None and new_master != server.proc.pid:
            os.kill(new_master, signal.SIGTERM)
            deadline = time.monotonic() + DEADLINE
            while os.path.exists(pid_file) and time.monotonic() < deadline:
                time.sleep(0.05)
        server.stop()
    assert not os.path.exists(pid_file)


@pytest.mark.parametrize("holder", ["listener", "another master"])
def test_metrics_port_in_use_is_one_line_and_exit_2(record_dir, holder):
    port = free_tcp_port()
    held = first = None
    try:
        if holder == "listener":
            held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.bind(("127.0.0.1", port))
            held.listen()
        else:  # an independent instance (not an upgrade, not --takeover) is refused
            first = Server("recorder:on_packet", "--metrics", f"127.0.0.1:{port}",
                           record_dir=record_dir)
            first.status()
        server = Server("recorder:on_packet", "--metrics", f"127.0.0.1:{port}",
                        record_dir=record_dir)
        assert server.proc.wait(DEADLINE) == 2
        server.stop()
        assert server.lines == [f"udp-reader: error: --metrics 127.0.0.1:{port}: "
                                "the port is in use"]
        if first is not None:
            assert first.proc.poll() is None
            assert scrape(f"http://127.0.0.1:{port}/metrics")[
                ("udp_reader_worker_starts_total", ())] == 1
    finally:
        if held is not None:
            held.close()
        if first is not None:
            assert first.stop() == 0


@pytest.mark.parametrize("address, words", [
    ("9100x", "--metrics: address '9100x' has no port"),
    ("127.0.0.1:70000", "--metrics: "),
])
def test_bad_metrics_address_is_one_line_and_exit_2(record_dir, address, words):
    server = Server("recorder:on_packet", "--metrics", address, record_dir=record_dir)
    assert server.proc.wait(DEADLINE) == 2
    server.stop()
    assert len(server.lines) == 1 and server.lines[0].startswith("udp-reader: error: ")
    assert words in server.lines[0]


def test_metrics_without_prometheus_client_is_one_line_and_exit_2(record_dir):
    # A package of that name that cannot be imported, ahead on the path.
    os.mkdir(os.path.join(record_dir, "prometheus_client"))
    with open(os.path.join(record_dir, "prometheus_client", "__init__.py"), "w") as f:
        f.write("raise ImportError('not installed')\n")
    server = Server("recorder:on_packet", "--metrics", "127.0.0.1:0", record_dir=record_dir)
    assert server.proc.wait(DEADLINE) == 2
    server.stop()
    assert server.lines == ['udp-reader: error: --metrics needs prometheus_client: '
                            'pip install "udp-reader[metrics]"']


def proc_figures(pid: int) -> tuple:
    """(open descriptors, threads) of process `pid`."""
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return len(os.listdir(f"/proc/{pid}/fd")), threads


def test_a_slowloris_neither_stops_scrapes_nor_costs_the_master_descriptors(record_dir):
    # 600 connections that never finish a request, against a master held
    # to 256 descriptors: scrapes are answered, and the endpoint holds at
    # most 2 x MAX_CONNECTIONS descriptors and threads whatever comes.
    from udp_reader.serve.metrics import MAX_CONNECTIONS

    server = Server("recorder:on_packet", "--metrics", "127.0.0.1:0", record_dir=record_dir)
    attackers = []
    try:
        url = metrics_url(server)
        subprocess.run(["prlimit", f"--pid={server.proc.pid}", "--nofile=256:256"], check=True)
        scrape(url)
        fds, threads = proc_figures(server.proc.pid)
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        for i in range(600):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((host, int(port)))
            attackers.append(s)
            if i % 2:  # half of them start a request and never end it
                try:
                    s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                except OSError:
                    pass
            if i % 150 == 149:
                samples = scrape(url)  # answered in the middle of it
                now_fds, now_threads = proc_figures(server.proc.pid)
                assert now_fds <= fds + 2 * MAX_CONNECTIONS
                assert now_threads <= threads + 2 * MAX_CONNECTIONS
        assert total(samples, "udp_reader_metrics_connections_cut_total") > 0
    finally:
        for s in attackers:
            s.close()
        code = server.stop()
    assert code == 0
    assert any("metrics: " in line and "connection(s) cut or refused" in line
               for line in server.lines)
