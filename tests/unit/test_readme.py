"""README's command synopses name every option the command takes."""

from __future__ import annotations

import os
import re

import pytest

from places import ROOT
from udp_reader.cli.main import build_parser

README = os.path.join(ROOT, "README.md")


def synopsis(command: str) -> set[str]:
    """The options in the first code block under '### udp-reader COMMAND'."""
    with open(README) as f:
        text = f.read()
    section = text.split(f"### udp-reader {command}\n", 1)[1]
    block = re.search(r"```\n(.*?)```", section, flags=re.S).group(1)
    return set(re.findall(r"--[a-z][a-z-]*", block))


def options(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {o for a in sub._actions for o in a.option_strings
            if o.startswith("--") and o != "--help"}


def commands() -> set[str]:
    parser = build_parser()
    return set(next(a for a in parser._actions if a.dest == "command").choices)


def test_every_command_and_only_commands_have_a_synopsis():
    with open(README) as f:
        text = f.read()
    assert set(re.findall(r"^### udp-reader ([a-z-]+)$", text, flags=re.M)) == commands()
    # Every command line README shows names a real command (metrics is
    # serve --metrics, not a command).
    shown = set(re.findall(r"^(?:\$ )?udp-reader ([a-z][a-z-]*)", text, flags=re.M))
    assert shown <= commands()


@pytest.mark.parametrize("command", ["listen", "watch", "send", "bench", "serve", "status"])
def test_synopsis_names_every_option(command):
    assert synopsis(command) == options(command)


def test_build_outputs_are_ignored():
    """The wheel recipe in Set-up writes dist/ and wheelhouse/: never commit them."""
    with open(os.path.join(os.path.dirname(README), ".gitignore")) as f:
        ignored = set(f.read().split())
    assert {"dist/", "wheelhouse/"} <= ignored
