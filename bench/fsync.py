"""How long fdatasync takes on this disk, by what was written before it.

bench/run.sh runs this in its work directory (on the store's disk) and
quotes the result beside the store writer's figures: a commit's fsync waits
for every page the commit wrote, and redb writes each copy-on-write page
where its allocator finds room, not next to the last.

    python3 bench/fsync.py DIR [ROUNDS]

prints one line per case, "<pages> <layout> <mean ms> <median ms>", for one
4 KiB page, 32 pages at random places in a 64 MiB file already written
once, and the same 32 pages in one contiguous write. A last line,
"12 paced <mean ms> <median ms> <p99 ms> <p99.9 ms>", times 3,000 rounds of
12 pages at random places, one fdatasync a millisecond: what one delivery's
commit writes at bench/steady.lua's 1,000 a second (strace of the store
writer gave 12.6 pages per commit at one delivery per commit), so the tail
of the disk alone can be read beside the exporter's.
"""

import os
import random
import sys
import time

from pacing import at_ms, every_millisecond

PAGE = 4096
FILE = 64 << 20


def main() -> None:
    directory = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    path = os.path.join(directory, "fsync-pages.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # Written and synced once, so that no case below allocates blocks.
        os.pwrite(fd, b"\1" * FILE, 0)
        os.fsync(fd)
        pages = FILE // PAGE
        cases = [
            (1, "contiguous", lambda: os.pwrite(fd, b"x" * PAGE, random.randrange(pages) * PAGE)),
            (32, "scattered", lambda: [os.pwrite(fd, b"x" * PAGE, random.randrange(pages) * PAGE) for _ in range(32)]),
            (32, "contiguous", lambda: os.pwrite(fd, b"x" * (32 * PAGE), random.randrange(pages - 32) * PAGE)),
        ]
        for count, layout, write in cases:
            waits = []
            for _ in range(rounds):
                write()
                start = time.perf_counter()
                os.fdatasync(fd)
                waits.append(time.perf_counter() - start)
            waits.sort()
            mean = sum(waits) / len(waits) * 1000
            median = waits[len(waits) // 2] * 1000
            print(f"{count} {layout} {mean:.3f} {median:.3f}")
        paced(fd, pages)
    finally:
        os.close(fd)
        os.unlink(path)


def paced(fd: int, pages: int, count: int = 12, rounds: int = 3000) -> None:
    """`count` scattered pages and an fdatasync, started every millisecond."""

    def write() -> None:
        for _ in range(count):
            os.pwrite(fd, b"x" * PAGE, random.randrange(pages) * PAGE)

    waits = every_millisecond(lambda: os.fdatasync(fd), rounds, before=write)
    mean = sum(waits) / len(waits) * 1000
    print(f"{count} paced {mean:.3f} {at_ms(waits, 0.5):.3f} {at_ms(waits, 0.99):.3f} {at_ms(waits, 0.999):.3f}")

if __name__ == "__main__":
    main()
