"""`udp-reader serve`: a master process supervising workers that share one
UDP port, restarted, resized and upgraded without losing a datagram.

    config.py     what it is asked to do: each option declared once
    signals.py    what each signal asks of the master
    arbiter.py    the master's loop over slots and workers; signals; stopping
    phase.py      the master's phase, and how it stops
    slots.py      a slot's states, its back-off and what a failed start leads to
    group.py      the port's group: slots in it and draining; TTIN, TTOU; --steer
    deadlines.py  how long a worker may take to start, to answer, to leave
    sources.py    where the sockets come from: bound, passed, inherited, taken over
    holders.py    the other masters holding our sockets (upgrade, takeover)
    processes.py  the process seam: every process the master starts
    orders.py     what the master tells a worker it starts
    exits.py      why a worker ended, counted by cause
    errors.py     a failure in one line for the operator
    snapshot.py   what the master knows, in one declared shape
    report.py     the snapshot built, the kernel's drops watched
    clock.py      the master's time, less its own pauses
    listeners.py  the sockets the master holds
    upgrade.py    sockets from a service manager, a predecessor or a peer
    counters.py   what the master counts, carried across an upgrade (USR2)
    foreground.py a serve in a terminal stays there across USR2
    workers.py    a worker process, as the master sees it
    protocol.py   what master and worker say to each other
    bootstrap.py  how a worker or new master starts Python (isolated)
    worker.py     the worker process itself
    keeper.py     a worker's handler state: restored, checkpointed, merged, handed on
    state.py      the handlers' state on disk: a framed file per slot, written whole
    privileges.py who the workers run as (--user, --group)
    logs.py       log lines, stamped with their time
    steering.py   which worker gets a datagram (--steer)
    pidfile.py    the pid file
    statusfile.py the master's snapshot on disk, beside the pid file
    metrics.py    the snapshot for Prometheus (--metrics)
"""
