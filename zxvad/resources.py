"""What a process has used, for logs and benchmarks."""

from __future__ import annotations

import resource


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or of its ended children), in MB."""
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB
