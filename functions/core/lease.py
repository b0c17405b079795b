"""A lease on shared state: until when it holds, when its holder renews it, when others take over.

Pure and clock-free: every question takes `now`. Window claims, holds on a growing job and STARTING
job records keep their lease as an epoch-seconds `until` in a Cloud Storage object; the holder
renews it with a compare-and-swap, and anyone who finds it expired may take the work over.
See docs/decisions/0700-how-imports-coalesce.md for the renewal rule.
"""

from __future__ import annotations

from dataclasses import dataclass

# The largest difference we allow between two clocks whose timestamps we compare: ours against
# Cloud Storage's `timeCreated` or the Healthcare API's operation `createTime`.
CLOCK_SKEW_SECONDS = 2.0
# The API's `createTime` against the time a start began (functions.imports.job_queue): an
# operation's `createTime` is stamped by a server queue, later and less precisely than an object's.
OPERATION_CLOCK_SKEW_SECONDS = 10.0
# Most of a lease a holder keeps in reserve before it renews: enough for a few Cloud Storage calls.
MAX_RENEWAL_MARGIN_SECONDS = 10.0


def renewal_margin(lease_seconds: float) -> float:
    """Lease that must be left before a holder goes on (else it renews): half the lease, at most
    `MAX_RENEWAL_MARGIN_SECONDS`."""
    return min(lease_seconds / 2, MAX_RENEWAL_MARGIN_SECONDS)


@dataclass(frozen=True)
class Lease:
    """Held until `until` (epoch seconds); expired from `until` on."""

    until: float

    @classmethod
    def starting(cls, now: float, seconds: float) -> Lease:
        return cls(now + seconds)

    def expired(self, now: float) -> bool:
        """May another holder take the work over?"""
        return self.until <= now

    def live(self, now: float) -> bool:
        return not self.expired(now)

    def left(self, now: float) -> float:
        return self.until - now

    def due_for_renewal(self, now: float, margin: float, ahead: float = 0.0) -> bool:
        """Renew when less is left than the larger of `margin` and `ahead` (twice the time the last
        round of work took: a slow round must not outlast the lease)."""
        return self.left(now) < max(margin, ahead)

    def renewed(self, now: float, seconds: float) -> Lease:
        return Lease.starting(now, seconds)
