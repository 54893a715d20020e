"""How many threads the model's products run on when the user does not say (``num_threads``).

torch's intra-op pool (OpenMP) starts one thread per logical CPU on some builds; two
hyper-threads of one core share its vector units, so a second thread there adds
synchronisation and no arithmetic. The default is therefore one thread per *physical* core that
this process may run on (its CPU affinity, which containers and ``taskset`` narrow), unless the
user chose with ``OMP_NUM_THREADS``. Each intra-op parallel region costs a barrier; on a machine
busy with other work, threads that wait for a descheduled sibling are what makes a decode step
several times slower, and ``num_threads=1`` (``--threads 1``) is then the better choice.
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


def default_num_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else ``physical_cores()``."""
    text = os.environ.get(THREADS_ENV, "")
    if text.strip().isdigit() and int(text) > 0:
        return int(text)
    return physical_cores()
