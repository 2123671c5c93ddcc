"""The manual (README.md and docs/) says what the product does: every
command has a synopsis naming every option it takes, every command line
shown names a real command, every relative link leads somewhere, and the
Reader's defaults shown are the library's."""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections import Counter
from typing import Dict, List

import pytest

import places
from udp_reader.cli.main import build_parser
from udp_reader.options import ReaderOptions

ROOT = pathlib.Path(places.ROOT)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A page's section per command: '## udp-reader listen', at any level.
COMMAND_HEADING = re.compile(r"^#+ udp-reader ([a-z-]+)$", flags=re.M)
FENCED = re.compile(r"^```.*?^```", flags=re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def manual() -> str:
    return "\n".join(page.read_text() for page in PAGES)


def synopsis(command: str) -> set[str]:
    """The options in the first code block under '# udp-reader COMMAND'."""
    text = manual()
    heading = next(h for h in COMMAND_HEADING.finditer(text) if h.group(1) == command)
    block = re.search(r"```\n(.*?)```", text[heading.end():], flags=re.S).group(1)
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
    text = manual()
    headings = Counter(COMMAND_HEADING.findall(text))
    assert set(headings) == commands()
    assert max(headings.values()) == 1, headings  # one section per command
    # Every command line shown names a real command (metrics is
    # serve --metrics, not a command).
    shown = set(re.findall(r"^(?:\$ )?udp-reader ([a-z][a-z-]*)", text, flags=re.M))
    assert shown <= commands()


@pytest.mark.parametrize("command", ["listen", "watch", "send", "bench", "serve", "status"])
def test_synopsis_names_every_option(command):
    assert synopsis(command) == options(command)


def anchors(page: pathlib.Path) -> set[str]:
    """The anchors a markdown renderer gives the page's headings."""
    seen: Dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#+ (.+)$", FENCED.sub("", page.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def links(page: pathlib.Path) -> List[str]:
    """The page's relative links, outside code blocks."""
    return [target for target in LINK.findall(FENCED.sub("", page.read_text()))
            if not re.match(r"[a-z]+:", target)]


def test_links_lead_to_a_file_and_a_heading():
    found, broken = 0, []
    for page in PAGES:
        for target in links(page):
            found += 1
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.is_file():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such heading")
    assert found and not broken, "\n".join(broken)


def test_reader_defaults_shown_are_the_librarys():
    shown = re.search(r"`Reader\(address, \*, (.*?)\)`", (ROOT / "docs/api.md").read_text())
    defaults = dict(pair.split("=", 1) for pair in shown.group(1).split(", "))
    declared = {f.name: f.default for f in dataclasses.fields(ReaderOptions)}
    assert declared.keys() <= defaults.keys()
    for name, value in declared.items():
        assert eval(defaults[name], {}) == value, name


def test_build_outputs_are_ignored():
    """The wheel recipe in Set-up writes dist/ and wheelhouse/: never commit them."""
    ignored = set((ROOT / ".gitignore").read_text().split())
    assert {"dist/", "wheelhouse/"} <= ignored
