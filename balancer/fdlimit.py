"""The file-descriptor limit: every client and backend connection holds one.

Many systems start a process with a soft RLIMIT_NOFILE of 1024 under a hard limit far above
it; a balancer at 1024 fds fails accepts and health probes long before limits.max_connections.
Raising the soft limit to the hard one is what nginx's worker_rlimit_nofile and HAProxy do.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("balancer")

# Besides client connections: listening sockets, the event loop, logs, Redis, health probes.
RESERVED_FDS = 64


def raise_fd_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, never failing the start; the soft
    limit in force is returned. Warns when it is too low for `max_connections` clients,
    each of which may hold a backend connection too."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError) as exc:
        log.debug("RLIMIT_NOFILE unknown: %s", exc)
        return -1
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        log.debug("RLIMIT_NOFILE soft %s, hard %s: kept", soft, hard)
    else:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:  # macOS caps it at OPEN_MAX; a sandbox may refuse
            log.debug("RLIMIT_NOFILE soft %s, hard %s: not raised (%s)", soft, hard, exc)
        else:
            log.debug("RLIMIT_NOFILE soft %s -> %s (hard %s)", soft, wanted, hard)
            soft = wanted
    if soft != resource.RLIM_INFINITY and soft < 2 * max_connections + RESERVED_FDS:
        log.warning(
            "open file limit %d is low for limits.max_connections %d (each client connection "
            "may hold a backend connection too): past it, new connections wait in the backlog",
            soft,
            max_connections,
        )
    return soft
