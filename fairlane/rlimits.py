"""The open-file limit the servers Fairlane starts need, lifted before they start."""

from __future__ import annotations

import resource

from fairlane.envoy.common import MAX_DOWNSTREAM_CONNECTIONS

# Each client connection Envoy holds has a file, and each admitted request another to its
# engine: 1,024, a common default, would refuse connections long before Envoy's own cap.
OPEN_FILES_WANTED = 2 * MAX_DOWNSTREAM_CONNECTIONS + 1024


def raise_open_file_limit() -> int:
    """Lift the open-file limit toward OPEN_FILES_WANTED (as far as the hard limit lets
    an unprivileged process), before the children start: Envoy, the worker and the
    engines inherit it. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = attainable(hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    return OPEN_FILES_WANTED if soft == resource.RLIM_INFINITY else soft


def attainable(hard: int) -> int:
    """The open-file limit serve sets under this hard limit."""
    return OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)


def connections_allowed(open_files: int) -> int:
    """About how many client connections Envoy can hold under ``open_files``."""
    return min(MAX_DOWNSTREAM_CONNECTIONS, open_files // 2)
