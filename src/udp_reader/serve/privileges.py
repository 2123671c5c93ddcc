"""Who the workers run as (--user, --group).

The master keeps root for what needs it (binding a port below 1024, forcing
receive buffers); each worker gives it up right after it starts, before it
imports the handler, so no handler code ever runs as root. The interpreter
and the handler's module must be readable by that user.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import List, NamedTuple, Optional


class Credentials(NamedTuple):
    uid: int
    gid: int
    groups: List[int]


def resolve(user: Optional[str], group: Optional[str]) -> Optional[Credentials]:
    """Names or ids to ids, once, in the master. ValueError with one line
    for the operator."""
    if user is None and group is None:
        return None
    if os.geteuid() != 0:
        raise ValueError(f"--user and --group need a master running as root "
                         f"(this one runs as uid {os.geteuid()})")
    uid, gid, name = os.getuid(), os.getgid(), None
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise ValueError(f"--user: no user {user!r}") from None
        uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group is not None:
        try:
            gid = (grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)).gr_gid
        except KeyError:
            raise ValueError(f"--group: no group {group!r}") from None
    groups = os.getgrouplist(name, gid) if name is not None else [gid]
    return Credentials(uid, gid, groups)


def drop(credentials: Credentials) -> None:
    """Become `credentials` for good (groups first: only root may set them)."""
    os.setgroups(credentials.groups)
    os.setgid(credentials.gid)
    os.setuid(credentials.uid)
