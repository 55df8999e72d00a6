"""One operation started once a millisecond, timed, for bench/fsync.py and
bench/cpu.py: both time what a delivery's work meets at bench/steady.lua's
1,000 a second, and read the tail of the times."""

import time
from typing import Callable, List, Optional


def every_millisecond(
    timed: Callable[[], object],
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
    before: Optional[Callable[[], object]] = None,
) -> List[float]:
    """Runs `before` (untimed) and then `timed` once a millisecond, `rounds`
    times, and returns how long each `timed` took by `clock`, in seconds,
    shortest first. A round that overruns its millisecond starts the next
    at once."""
    times = []
    due = time.perf_counter()
    for _ in range(rounds):
        if before is not None:
            before()
        start = clock()
        timed()
        times.append(clock() - start)
        due += 0.001
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    times.sort()
    return times


def at_ms(times: List[float], q: float) -> float:
    """The `q` quantile of sorted `times` (seconds), in milliseconds."""
    return times[min(len(times) - 1, int(q * len(times)))] * 1000
