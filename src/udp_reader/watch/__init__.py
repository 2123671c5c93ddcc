"""Watching a UDP port without taking its datagrams: a packet socket with a
kernel filter for the port (`udp-reader watch`)."""

from udp_reader.watch.watcher import Watcher

__all__ = ["Watcher"]
