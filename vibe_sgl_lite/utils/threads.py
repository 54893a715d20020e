"""How many threads the model's products run on when the user does not say (``num_threads``).

torch's intra-op pool (OpenMP) starts one thread per logical CPU on some builds; two
hyper-threads of one core share its vector units, so a second thread there adds
synchronisation and no arithmetic. And every parallel region ends in a barrier: when another
process keeps a core busy, the thread scheduled there is late to every barrier and the whole
step waits for it. Measured on a 2-core Xeon while two other processes ran (load average 3):
the bundled model decoded at 4.5 ms/token on one thread and 81.8 ms/token on two.

So the default is one thread per *physical* core this process may run on (its CPU affinity,
which containers and ``taskset`` narrow), less the cores the 1-minute load average says are
already busy, and at least one; ``OMP_NUM_THREADS``, when set, is the user's choice and wins.
The choice is made once, when the engine starts.
"""

from __future__ import annotations

import os
from pathlib import Path

THREADS_ENV = "OMP_NUM_THREADS"


def physical_cores(sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """Physical cores among the CPUs this process may use (hyper-thread siblings count once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return max(1, os.cpu_count() or 1)
    cores: set[str] = set()
    for cpu in cpus:
        try:
            cores.add((sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text())
        except OSError:  # no topology (not Linux, or a masked /sys): count the CPU itself
            cores.add(f"cpu{cpu}")
    return max(1, len(cores))


def busy_cores() -> int:
    """Cores other processes keep busy: the 1-minute load average, rounded (0 where unknown)."""
    try:
        return int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        return 0


def default_num_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else the physical cores not busy."""
    text = os.environ.get(THREADS_ENV, "")
    if text.strip().isdigit() and int(text) > 0:
        return int(text)
    cores = physical_cores()
    return max(1, cores - busy_cores())
