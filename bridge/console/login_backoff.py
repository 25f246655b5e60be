"""Failed console logins slowed down, per client address: the first `FREE_FAILURES` are
answered at once; each later one blocks the address for a time that doubles from 1 s up to
`MAX_DELAY`, during which its logins are refused with 429 and `Retry-After` without the
key being looked at. A successful login forgets the address, as does a quiet
`FORGET_AFTER`. The table is shared by the workers (`bridge.core.shared_state`) and holds
at most `MAX_ADDRESSES` addresses: when full, those idle longest make room.
"""

from __future__ import annotations

import time
from pathlib import Path

from bridge.core.shared_state import SharedFile

FREE_FAILURES = 5
MAX_DELAY = 60.0  # seconds
FORGET_AFTER = 15 * 60.0  # seconds without a failure
MAX_ADDRESSES = 1024


def delay_after(failures: int) -> float:
    """Seconds an address waits after its `failures`-th failure in a row."""
    if failures <= FREE_FAILURES:
        return 0.0
    return min(MAX_DELAY, 2.0 ** min(failures - FREE_FAILURES - 1, 16))


class LoginBackoff:
    """The failed-login table: address → [failures in a row, monotonic time of the last]."""

    def __init__(self, directory: Path | None = None, max_addresses: int = MAX_ADDRESSES):
        self.file = SharedFile("console-logins.json", directory)
        self.max_addresses = max_addresses

    def wait(self, address: str) -> float:
        """Seconds until `address` may try to log in again (0: now)."""
        with self.file.locked() as table:
            failures, last = table.get(address) or (0, 0.0)
        return max(0.0, last + delay_after(failures) - time.monotonic())

    def failed(self, address: str) -> float:
        """Count a failed login; the seconds the address must now wait (0: none)."""
        now = time.monotonic()
        with self.file.locked() as table:
            failures, last = table.pop(address, None) or (0, now)
            if now - last > FORGET_AFTER:
                failures = 0
            for idle in [a for a, (_, at) in table.items() if now - at > FORGET_AFTER]:
                del table[idle]
            while len(table) >= self.max_addresses:  # idle longest make room
                del table[min(table, key=lambda a: table[a][1])]
            table[address] = [failures + 1, now]
        return delay_after(failures + 1)

    def succeeded(self, address: str) -> None:
        with self.file.locked() as table:
            table.pop(address, None)
