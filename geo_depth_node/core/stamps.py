"""Stamp order of one input stream: late messages, bag loops and stray stamps, told apart.

ROS-free. One :class:`StampGuard` per stream (an image topic in the synchroniser, the GNSS,
IMU or odometry buffer of the pose source) decides what a new header stamp means:

* newer than the newest accepted stamp: ``ACCEPT``;
* not newer (a late or repeated message, or the first message of a time jump back): it is
  HELD, not acted on. A time jump is only believed when the stream confirms it: the next
  message is again not newer than the newest accepted stamp but newer than the held one
  (the stream goes on in the past: ``rosbag play --loop``, a restarted player, a driver whose
  clock was reset). The guard then answers ``JUMP`` with every held message, oldest first:
  the caller starts its buffers over from them (or drops stray future stamps from them,
  :func:`restart_index`). Any other next
  message shows that the held ones were strays (stamp 0, a 1970 clock, one late message):
  they are answered back as ``late`` and the stream goes on untouched. So one bad stamp never
  resets a buffer, and a loop of any length (also one shorter than a second) is found by the
  jump itself (a loop of a single repeated stamp cannot be told from a repeated message).

Example: ``g = StampGuard()``; ``g.check(10, a)`` is ACCEPT; ``g.check(3, b)`` HELD;
``g.check(4, c)`` JUMP with items ``[(3, b), (4, c)]`` (the caller resets and adds them);
had the third been ``g.check(11, c)``, it would be ACCEPT with ``late == [(3, b)]``. A
caller that confirms a jump by its own test takes the held ones with
:meth:`StampGuard.confirm_jump`.

A message stamped far in the FUTURE (more than ``max_ahead_ns`` after the newest) is held too,
until the next message says what it was: one after it confirms a real gap (both are accepted,
``Decision.before`` first), one before it shows it was a stray stamp (answered late, never
used). Without ``max_ahead_ns`` it is accepted like any newer one; the stream that goes on at
the right time then looks like a jump back, and :func:`restart_index` tells the caller, from
its buffered stamps, a true loop (nothing buffered just before the held stamps) from a stray
future stamp (the buffer goes on right before them: drop the buffered stamps newer than the
held ones).
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Generic, TypeVar

T = TypeVar('T')


class Verdict(enum.Enum):
    """What :meth:`StampGuard.check` decided about a stamp."""

    ACCEPT = 'accept'  # newer than the newest: use it
    HELD = 'held'  # not newer: held until the next message says what it was
    JUMP = 'jump'  # the stream went back in time: restart from ``Decision.items``


@dataclasses.dataclass
class Decision(Generic[T]):
    """The answer of :meth:`StampGuard.check`.

    Attributes:
        verdict: see :class:`Verdict`.
        items: with JUMP, the (stamp ns, item) pairs the stream restarts from, oldest first
            (the held ones and the new one); else empty.
        late: (stamp ns, item) pairs that turned out to be late or stray: the caller drops and
            counts them (out of order).
        before: with ACCEPT, (stamp ns, item) pairs to take before this one (a message far
            ahead that this one confirmed).
    """

    verdict: Verdict
    items: list[tuple[int, T]] = dataclasses.field(default_factory=list)
    late: list[tuple[int, T]] = dataclasses.field(default_factory=list)
    before: list[tuple[int, T]] = dataclasses.field(default_factory=list)


class StampGuard(Generic[T]):
    """Order of the stamps of one stream (not thread-safe: the caller's lock guards it).

    Args:
        confirm: messages in a row that must agree before a jump back is believed (>= 2:
            one message never restarts a stream). The synchroniser asks for more and confirms
            a jump earlier by its own test (a complete stereo set in the past).
        max_ahead_ns: a message more than this after the newest waits for the next one
            (see the module docstring); None: accepted at once.
    """

    def __init__(self, confirm: int = 2, max_ahead_ns: int | None = None) -> None:
        if isinstance(confirm, bool) or not isinstance(confirm, int) or confirm < 2:
            raise ValueError(f'confirm must be an integer >= 2, got {confirm!r}')
        if max_ahead_ns is not None and not max_ahead_ns > 0:
            raise ValueError(f'max_ahead_ns must be > 0 or None, got {max_ahead_ns!r}')
        self.confirm = confirm
        self.max_ahead_ns = max_ahead_ns
        self.newest: int | None = None
        self._held: list[tuple[int, T]] = []
        self._ahead: tuple[int, T] | None = None

    def check(self, stamp_ns: int, item: T, *, advance: bool = True) -> Decision[T]:
        """Decide what ``stamp_ns`` (of ``item``) means; see the module docstring.

        Args:
            stamp_ns: the message's header stamp, ns.
            item: what the caller wants back with a JUMP or as late.
            advance: an accepted stamp becomes the newest (False: the caller sets
                :attr:`newest` itself, e.g. the synchroniser to the last EMITTED stamp).
        """
        stamp = int(stamp_ns)
        before: list[tuple[int, T]] = []
        late_ahead: list[tuple[int, T]] = []
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            if stamp > ahead[0]:  # the stream goes on after it: a real gap
                before = [ahead]
                if advance:
                    self.newest = ahead[0]
            else:  # the stream goes on before it: it was a stray future stamp
                late_ahead = [ahead]
        if self.newest is not None and self.max_ahead_ns is not None and not before \
                and stamp - self.newest > self.max_ahead_ns:
            self._ahead = (stamp, item)
            late, self._held = self._held, []
            return Decision(Verdict.HELD, late=late + late_ahead)
        if self.newest is None or stamp > self.newest:
            late, self._held = self._held, []
            if advance:
                self.newest = stamp
            return Decision(Verdict.ACCEPT, late=late + late_ahead, before=before)
        # not newer than the newest accepted stamp
        if self._held and stamp > self._held[-1][0]:
            self._held.append((stamp, item))
            if len(self._held) >= self.confirm:
                items, self._held = self._held, []
                self.newest = items[-1][0]
                return Decision(Verdict.JUMP, items=items, late=late_ahead)
            return Decision(Verdict.HELD, late=late_ahead)
        late, self._held = self._held, [(stamp, item)]
        return Decision(Verdict.HELD, late=late + late_ahead)

    @property
    def held(self) -> list[tuple[int, T]]:
        """The held (stamp ns, item) pairs, oldest first (a copy)."""
        return list(self._held)

    def confirm_jump(self) -> list[tuple[int, T]]:
        """The caller has confirmed a jump by its own test: take the held messages (oldest
        first) and make the newest of them the newest stamp."""
        items, self._held = self._held, []
        if items:
            self.newest = items[-1][0]
        return items

    def flush(self) -> list[tuple[int, T]]:
        """Give up the held messages (late, as nothing confirmed them); e.g. at the end of a
        bag."""
        late, self._held = self._held, []
        if self._ahead is not None:
            late.append(self._ahead)
            self._ahead = None
        return late

    def reset(self) -> None:
        """Forget everything (as a new stream)."""
        self.newest = None
        self._held = []
        self._ahead = None


def restart_index(buffered: list[int], first_held_ns: int, max_gap_ns: int) -> int | None:
    """After a confirmed jump back to ``first_held_ns``: where the caller's sorted buffer of
    stamps goes on.

    Returns:
        ``k`` such that ``buffered[:k]`` (all older than ``first_held_ns``, the newest of them
        at most ``max_gap_ns`` before it) is the stream's own past and ``buffered[k:]`` are stray
        future stamps to drop; None when nothing in the buffer continues into the held stamps
        (a true loop or restart: the caller clears its buffer).
    """
    import bisect

    k = bisect.bisect_left(buffered, first_held_ns)
    if k == 0 or first_held_ns - buffered[k - 1] > max_gap_ns:
        return None
    return k

