"""The worker's process entry for ``fairlane serve``: ``python -m fairlane.worker_entry``.

``fairlane serve`` tells its worker to look at the policy file (SIGUSR1) as soon as it
sees it change, so a model added to the policy is known to the worker before its engine
is up, and forwards SIGHUP (reload). Both signals' default action ends a process, and the
worker installs its handlers only after importing gRPC and the rest, so this entry
ignores them first: a reload asked for before the handlers are in place is moot, as the
worker reads the policy when it starts.
"""

import signal
import sys

if __name__ == "__main__":
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)

    from fairlane.worker import main

    raise SystemExit(main(sys.argv[1:]))
