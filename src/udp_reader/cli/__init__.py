"""The `udp-reader` command: listen (with its live line and top view, and the
output formats), send (the load generator), bench, serve, status and watch.
The library below imports nothing from here."""

from udp_reader.cli.main import main

__all__ = ["main"]
