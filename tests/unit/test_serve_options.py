"""serve's options and signals, each declared once: the checks, the command
line made from them and docs/serve-options.md. No socket, no process."""

from __future__ import annotations

import os
import signal

import pytest

from udp_reader import ReaderOptions
from udp_reader.cli import serve_docs
from udp_reader.cli.main import build_parser
from udp_reader.cli.serve_flags import make_config
from udp_reader.serve.arbiter import Arbiter
from udp_reader.serve.config import OPTIONS, Config
from udp_reader.serve.signals import SIGNALS, signal_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPUS = len(os.sched_getaffinity(0))


def test_the_options_page_is_up_to_date():
    with open(os.path.join(ROOT, "docs", "serve-options.md")) as f:
        assert f.read() == serve_docs.markdown(), \
            f"docs/serve-options.md is out of date; write it again: {serve_docs.COMMAND}"


def serve(*flags: str) -> Config:
    argv = ["serve", "app:handle", *flags]
    return make_config(build_parser().parse_args(argv), argv)


def test_without_flags_every_option_has_its_declared_default():
    config = serve()
    assert config == Config(handler="app:handle", argv=["serve", "app:handle"])
    assert {o.name: getattr(config, o.name) for o in OPTIONS[1:]} == \
        {o.name: o.default for o in OPTIONS[1:]}
    assert config.reader == ReaderOptions(gro=True)


def test_each_flag_sets_its_field():
    config = serve("--bind", ":9000", "--workers", "3", "--shared", "--join", "239.1.2.3@lo",
                   "--join", "10.0.0.5>232.1.1.1", "--batches", "--grace", "0",
                   "--graceful-timeout", "2", "--start-timeout", "3.5", "--timeout", "0",
                   "--max-packets", "100", "--max-packets-jitter", "7", "--user", "nobody",
                   "--group", "nogroup", "--pid-file", "serve.pid", "--metrics", ":9100",
                   "--handoff", "h", "--takeover", "t", "--min-size", "4", "--no-gro",
                   "--ip-fields")
    assert [str(m) for m in config.join] == ["239.1.2.3@lo", "10.0.0.5>232.1.1.1"]
    assert (config.bind, config.workers, config.shared, config.batches, config.grace,
            config.graceful_timeout, config.start_timeout, config.timeout, config.max_packets,
            config.max_packets_jitter, config.user, config.group, config.pid_file,
            config.metrics, config.handoff_dir, config.takeover_dir) == (
        ":9000", 3, True, True, 0.0, 2.0, 3.5, 0.0, 100, 7, "nobody", "nogroup", "serve.pid",
        ":9100", "h", "t")
    assert config.reader == ReaderOptions(min_size=4, gro=False, ip_fields=True)
    assert serve("--steer", "spread").steer == "spread"


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers must be at least 1, not 0"),
    (["--grace", "-1"], "--grace must be 0 or more, not -1"),
    (["--graceful-timeout", "0"], "--graceful-timeout must be positive, not 0"),
    (["--start-timeout", "-2.5"], "--start-timeout must be positive, not -2.5"),
    (["--timeout", "inf"], "--timeout must be 0 (never) or positive, not inf"),
    (["--max-packets", "0"], "--max-packets must be at least 1, not 0"),
    (["--max-packets-jitter", "-1"], "--max-packets-jitter must be 0 or more, not -1"),
    (["--steer", "spread", "--shared"], "--steer spread needs a socket per worker, not --shared"),
    (["--steer", "cpu", "--join", "239.1.2.3"],
     "--steer cpu needs a socket per worker, but --join serves one shared socket (every "
     "socket on the port would get its own copy of each multicast datagram)"),
    (["--steer", "cpu", "--workers", str(CPUS + 1)],
     f"--steer cpu: {CPUS + 1} workers but {CPUS} CPU(s)"),
    (["--join", "239.1.2.3@lo", "--join", "239.1.2.3@lo"], "--join 239.1.2.3@lo: given twice"),
    (["--join", "10.1.2.3"],
     "--join 10.1.2.3: group '10.1.2.3' is not a multicast address (224.0.0.0/4)"),
    (["--group", "nogroup"], "--group needs --user: without it the workers would keep root"),
    (["--metrics", "9100"], "--metrics: address '9100' has no port (use host:port or :port)"),
    (["--min-size", "10", "--max-size", "2"], "--min-size (10) must not exceed --max-size (2)"),
    (["--rcvbuf", "0"], "--rcvbuf must be a positive int, not 0"),
])
def test_a_wrong_value_is_one_line_naming_its_flag(flags, message):
    with pytest.raises(ValueError) as info:
        serve(*flags)
    assert str(info.value) == message


def test_the_api_is_checked_by_the_same_declarations():
    with pytest.raises(ValueError, match="^--steer must be one of hash, spread, cpu$"):
        Config(handler="app:handle", steer="round-robin")
    with pytest.raises(ValueError, match="^--workers must be at least 1, not -1$"):
        Config(handler="app:handle", workers=-1)


def test_help_shows_every_option_and_what_each_signal_asks():
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    text = commands["serve"].format_help()
    for o in OPTIONS:
        assert (o.flag or o.metavar) in text
    for s in SIGNALS:
        assert f"\n  {s.name} " in text


def test_every_signal_the_master_takes_has_its_line():
    assert set(Arbiter(Config(handler="app:handle")).handlers) == {s.number for s in SIGNALS}
    assert signal_line(signal.SIGHUP).startswith("HUP: rolling restart")
    assert signal_line(signal.SIGRTMIN + 1).startswith("RTMIN+1: one slot more, as TTIN")
