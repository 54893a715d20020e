"""How much memory the KV pool may take when the user does not say (``max_total_tokens=None``)."""

from __future__ import annotations

import torch


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free bytes, or the OS's ``MemAvailable`` on CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3  # no /proc (macOS, Windows): assume a modest 4 GiB
