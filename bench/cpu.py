"""How steady this machine's CPU is: the same work, timed again and again.

bench/run.sh runs this before the exporter starts and quotes it beside the
steady-rate p99: on a shared virtual machine a unit of work sometimes takes
many times its usual CPU time, and a delivery that waits behind such a
unit waits that much longer, whatever the code does.

    python3 bench/cpu.py [SECONDS]

times a fixed unit of work (about 0.3 ms of CPU here), started once a
millisecond, 1,000 times for each of SECONDS (default 5), by the thread's
own CPU clock (time the thread was not running is not counted), and prints
one line:
"<units> <median ms> <p99 ms> <p99.9 ms> <max ms> <units over 5x the median>".
"""

import sys
import time

from pacing import at_ms, every_millisecond


def unit() -> int:
    total = 0
    for i in range(4000):
        total += i * i
    return total


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    times = every_millisecond(unit, int(seconds * 1000), clock=time.thread_time)
    median = at_ms(times, 0.5)
    slow = sum(1 for t in times if t * 1000 > 5 * median)
    print(f"{len(times)} {median:.3f} {at_ms(times, 0.99):.3f} {at_ms(times, 0.999):.3f} {times[-1] * 1000:.3f} {slow}")

if __name__ == "__main__":
    main()
