"""Addresses as text: parsed and formatted, with no socket."""

import pytest

from udp_reader.sockets import format_address, parse_address


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9000", ("127.0.0.1", 9000)),
    (":9000", ("", 9000)),
    ("[::1]:53", ("::1", 53)),
    ("[::]:0", ("::", 0)),
    ("localhost:1", ("localhost", 1)),
    (("127.0.0.2", 7), ("127.0.0.2", 7)),
    (9000, ("", 9000)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text, words", [
    ("127.0.0.1", "no port"),
    ("127.0.0.1:x", "not a number"),
    ("127.0.0.1:65536", "outside 0..65535"),
    ("::1:53", "brackets"),
    (("127.0.0.1",), "(host, port)"),
])
def test_malformed_address_raises_value_error(text, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_address(text)


def test_address_of_wrong_type_raises_type_error():
    with pytest.raises(TypeError):
        parse_address(1.5)


def test_format_address_brackets_ipv6():
    assert format_address("::1", 5) == "[::1]:5"
    assert format_address("127.0.0.1", 5) == "127.0.0.1:5"
