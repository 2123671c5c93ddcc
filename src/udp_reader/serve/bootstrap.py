"""How the master starts Python: a worker, or the master that succeeds it
on USR2, imports nothing the worker account may have written while it is
still root.

`python -m` would put the working directory first on sys.path and honour
PYTHONPATH, where a handler's modules usually live and a compromised
handler running as --user could plant a json.py that the next root process
imports. So children run isolated (-I: no working directory, no PYTHONPATH
or other PYTHON* variables, no user site-packages) with udp_reader's own
directory appended (last: it can shadow nothing), and a worker puts the
handler's search path back only once it has dropped privileges.
"""

from __future__ import annotations

import os
import sys
from typing import List

import udp_reader

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(udp_reader.__file__)))


def command(module: str) -> List[str]:
    """The argv that runs `python -m MODULE`, isolated."""
    code = (f"import runpy, sys; sys.path.append({PACKAGE_ROOT!r}); "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-I", "-c", code]


def handler_path() -> List[str]:
    """What `python -m` would have put before the standard library: the
    working directory, then each PYTHONPATH entry."""
    entries = [os.getcwd()]
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and os.path.abspath(entry) not in entries:
            entries.append(os.path.abspath(entry))
    return entries
