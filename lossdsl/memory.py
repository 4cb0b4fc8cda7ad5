"""Whether tensors of a given size fit in the memory available, asked before any is allocated.

``lossdsl bench --shape 40000,40000`` or ``lossdsl plot --classes 3000000`` would otherwise allocate
tens of gigabytes and die in the middle of it (the kernel's OOM killer, or a Traceback from torch).
The estimate is the tensors a run holds at once; what is available is the smallest of what the
system, the process's address-space limit and its cgroup allow (the free memory of a CUDA device).
"""

from __future__ import annotations

import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LossConfigError


def available_bytes(device: str = "cpu") -> int | None:
    """Bytes a new allocation on ``device`` may take, or None where that cannot be told."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    limits = [_meminfo_available(), _address_space_left(), _cgroup_left()]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def refuse_if_too_large(needed: int, what: str, device: str = "cpu", hint: str | None = None) -> None:
    """Raise a LossConfigError when ``needed`` bytes (for ``what``) exceed what is available."""
    available = available_bytes(device)
    if available is not None and needed > available:
        raise LossConfigError(
            f"{what} needs about {_size(needed)}, more than the {_size(available)} available on "
            f"{device}", hint=hint,
        )


# How torch's allocators say it: "CUDA out of memory", "DefaultCPUAllocator: can't allocate memory".
_OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory")


@contextmanager
def out_of_memory_as_error(what: str, hint: str | None = None) -> Iterator[None]:
    """Running out of memory inside the block as a LossConfigError: the estimate before a run is a
    lower bound, so a run it lets through may still not fit."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if not isinstance(error, MemoryError) and not _OUT_OF_MEMORY.search(str(error)):
            raise
        raise LossConfigError(f"{what} ran out of memory", hint=hint) from None


def _size(count: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count / 2**10:.1f} KiB"


def _meminfo_available() -> int | None:
    return _field_kib(Path("/proc/meminfo"), "MemAvailable:")


def _address_space_left() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = _field_kib(Path("/proc/self/status"), "VmSize:")
    return None if used is None else max(0, soft - used)


def _cgroup_left() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        return None


def _field_kib(path: Path, key: str) -> int | None:
    try:
        with path.open() as lines:
            for line in lines:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
