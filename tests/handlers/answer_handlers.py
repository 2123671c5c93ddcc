"""Handlers for serve tests that answer."""


def echo(packet):
    """Per packet: what it returns is the reply."""
    if packet.data == b"silence":
        return None
    if packet.data == b"twice":
        return [b"one", b"two"]
    return b"echo:" + packet.data


def echo_batch(batch):
    """Per batch: it answers through the batch."""
    batch.reply([b"batch:" + p.data for p in batch])


def ip_fields(packet):
    """Per packet: answers with the TTL and TOS it arrived with."""
    return f"{packet.ttl} {packet.tos}".encode()
