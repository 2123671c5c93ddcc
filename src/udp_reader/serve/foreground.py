"""A serve in a terminal's foreground stays there across an upgrade.

USR2 starts the new master as our child, in our process group. Were we to
exit once it serves, the shell would print its prompt and take the
terminal back while the new master went on writing to it, out of reach of
Ctrl-C. So, in a terminal's foreground, the old master waits for the new
one once it has left the port, and ends with its exit status: the prompt
comes back when the new master stops. Ctrl-C and Ctrl-\\ reach the whole
process group, the new master included, so signals from the terminal are
not passed on again; signals sent to our pid (kill) are.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Optional

from udp_reader.serve.signals import SIGNALS

log = logging.getLogger("udp_reader")

FORWARDED = {s.number for s in SIGNALS}  # every signal the master takes
SI_KERNEL = 0x80  # si_code of a signal the kernel sent, a terminal's Ctrl-C among them


def in_foreground() -> bool:
    """True when our terminal's foreground process group is ours."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            return False
    return False


def follow(new_master: Optional[subprocess.Popen], code: int) -> int:
    """Our exit status: `code`, or, after an upgrade in a terminal's
    foreground, the new master's once it ends."""
    if new_master is None or new_master.poll() is not None or not in_foreground():
        return code
    waited = FORWARDED | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)  # from here on none is missed
    log.info("master %d serves on in this terminal; this process waits for it "
             "(Ctrl-C stops it)", new_master.pid)
    while new_master.poll() is None:
        info = signal.sigtimedwait(waited, 1.0)
        if info is not None and info.si_signo in FORWARDED and info.si_code != SI_KERNEL:
            new_master.send_signal(info.si_signo)
    status = new_master.returncode
    return status if status >= 0 else 128 - status
