"""Peak-memory measurement shared by the benchmark scripts: growth of the resident set's peak."""

from __future__ import annotations

import resource
from collections.abc import Callable


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    """The high-water mark of this process's resident set (``VmHWM``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_growth_bytes(step: Callable[[], object]) -> int:
    """Bytes by which the resident set's peak exceeds its size before ``step()`` during it.

    Resets ``VmHWM`` to the current resident size first (``/proc/self/clear_refs``), so earlier
    peaks of the process (imports, warm-up) do not count; raises ``OSError`` where Linux does not
    allow the reset, since the figure would then be meaningless.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError as error:
        raise OSError("cannot reset the peak resident set size (/proc/self/clear_refs)") from error
    before = _rss_bytes()
    step()
    return max(_peak_rss_bytes() - before, 0)
