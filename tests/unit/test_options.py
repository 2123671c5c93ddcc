"""ReaderOptions: the one declaration of what a Reader takes, checked with
no socket (a Reader refuses wrong options before it opens one)."""

import argparse

import pytest

from udp_reader import Reader, ReaderOptions
from udp_reader.cli.reader_flags import add_reader_flags, reader_options
from udp_reader.options import MAX_BATCH


@pytest.mark.parametrize("kwargs, error, message", [
    ({"min_size": "x"}, TypeError, "min_size must be an int, not 'x'"),
    ({"max_size": 1.5}, TypeError, "max_size must be an int, not 1.5"),
    ({"batch_size": True}, TypeError, "batch_size must be an int, not True"),
    ({"min_size": 70000}, ValueError, "min_size must be within 0..65535, not 70000"),
    ({"min_size": 10, "max_size": 2}, ValueError, "min_size (10) must not exceed max_size (2)"),
    ({"batch_size": MAX_BATCH + 1}, ValueError, "batch_size must be within 1..1024, not 1025"),
    ({"rcvbuf": 0}, ValueError, "rcvbuf must be a positive int or None, not 0"),
    ({"rcvbuf": "1M"}, TypeError, "rcvbuf must be a positive int or None, not '1M'"),
    ({"rcvbuf": 1 << 40}, ValueError, "rcvbuf must be at most"),
    ({"gro": 1}, TypeError, "gro must be a bool, not 1"),
    ({"timestamps": None}, TypeError, "timestamps must be a bool, not None"),
    ({"ip_fields": 1}, TypeError, "ip_fields must be a bool, not 1"),
])
def test_wrong_options_name_the_argument(kwargs, error, message):
    with pytest.raises(error) as info:
        ReaderOptions(**kwargs)
    assert str(info.value).startswith(message)
    # The Reader checks through the same declaration.
    with pytest.raises(error) as info:
        Reader(0, **kwargs)
    assert str(info.value).startswith(message)


def test_rcvbuf_none_is_allowed():
    assert ReaderOptions(rcvbuf=None).rcvbuf is None


def parse(*argv: str, gro: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_reader_flags(parser, gro=gro)
    return parser.parse_args(argv)


def test_flags_build_options():
    args = parse("--min-size", "8", "--max-size", "1500", "--batch-size", "32",
                 "--rcvbuf", "1048576", "--no-gro", "--ip-fields")
    assert reader_options(args, timestamps=True) == ReaderOptions(
        min_size=8, max_size=1500, batch_size=32, rcvbuf=1 << 20, gro=False, timestamps=True,
        ip_fields=True)
    assert reader_options(parse()) == ReaderOptions(gro=True)
    assert reader_options(parse(gro=False)) == ReaderOptions(gro=False)
    with pytest.raises(SystemExit):
        parse("--no-gro", gro=False)


@pytest.mark.parametrize("argv, message", [
    (["--min-size", "10", "--max-size", "2"], "--min-size (10) must not exceed --max-size (2)"),
    (["--batch-size", "0"], "--batch-size must be within 1..1024, not 0"),
    (["--rcvbuf", "-1"], "--rcvbuf must be a positive int, not -1"),
])
def test_wrong_flags_are_one_line_in_flag_spelling(argv, message):
    with pytest.raises(ValueError) as info:
        reader_options(parse(*argv))
    assert str(info.value) == message
