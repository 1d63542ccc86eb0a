"""ROS-free message synchroniser: pairs messages of N named inputs by stamp.

``message_filters`` is not available everywhere this package runs, and the
ROS shell only needs a small part of it, so this module implements exact and
approximate time synchronisation on opaque message objects with integer
nanosecond stamps. It never imports rclpy or any message module; the ROS shell
converts ``header.stamp`` to nanoseconds and calls :meth:`TimeSynchronizer.add`.

Approximate algorithm (also used for ``exact`` with a slop of 0)
-----------------------------------------------------------------
Every input keeps a queue of pending messages sorted by stamp. After each
``add`` the synchroniser looks for the *tightest* complete set: for every
pending stamp ``lo`` (of any input) taken as the lower edge of a window, each
input contributes its oldest pending stamp ``>= lo``; the window is valid when
all of those lie within ``lo + slop_ns`` and its spread is
``max(chosen) - lo``. The valid window with the smallest spread wins; ties go
to the newest window (largest ``lo``). From the winning window ``[lo, hi]``
every input then takes its *newest* pending message with stamp ``<= hi``
(which lies inside the window), so the emitted set never spans more than
``slop_ns`` (``max - min <= slop_ns``) and is the tightest set available.

Time jumps: a message not newer than the last emitted stamp of its input is held
(:class:`~geo_depth_node.core.stamps.StampGuard`), not dropped at once. When the held
messages of all inputs form two complete sets (whole stereo frames came again from the past:
``rosbag play --loop``, a restarted player; a loop of any length, also shorter than a second),
or one input went on in the past for ``2 * queue_size`` messages in a row (at least 3), time
went back: every
queue starts over and the held messages are queued again, so no frame of the new pass is
lost. A held message that the next message of its input does not continue was late (or a
stray stamp): it stays counted as ``out_of_order``. Late messages can never form a complete
set, because the other inputs' messages of their stamp were already emitted or dropped
(only heavy reordering between topics, which DDS does not do within one topic, comes close:
hence two sets).

Sets are emitted eagerly: as soon as a valid set exists it is emitted, and
then every pending message whose stamp is ``<=`` the emitted stamp of its
input is removed (messages that were never emitted count as
``dropped_unmatched``). Because no valid set remains after an ``add``, any new
valid set must contain the message just added; hence one ``add`` emits at most
one set, except the ``add`` that confirms a time jump (see above).
"""
from __future__ import annotations

import bisect
import dataclasses
import operator
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .stamps import StampGuard, Verdict

__all__ = ['MODES', 'SyncStats', 'TimeSynchronizer']

#: Accepted values of the ``mode`` argument.
MODES = ('exact', 'approximate')


@dataclasses.dataclass(frozen=True)
class SyncStats:
    """Counters of a :class:`TimeSynchronizer` (a snapshot; never reset).

    Attributes:
        matched: number of complete sets passed to the callback.
        dropped_unmatched: messages evicted without ever being emitted: queue
            overflow, older than (or as old as) an emitted set of their input,
            or discarded by :meth:`TimeSynchronizer.reset`.
        out_of_order: messages whose stamp was ``<=`` the last emitted stamp
            of their input and that no later message confirmed as a time jump;
            they can never be emitted and are dropped.
        rejected: ``add`` calls refused with an exception (unknown input name,
            negative or non-integer stamp).
        time_jumps: confirmed jumps back in time of an input (a bag loop): each reset the
            queues (:meth:`reset`) and queued the messages of the new pass.
    """

    matched: int = 0
    dropped_unmatched: int = 0
    out_of_order: int = 0
    rejected: int = 0
    time_jumps: int = 0


class TimeSynchronizer:
    """Pairs messages from N named inputs by header stamp (exact or approximate).

    See the module docstring for the matching algorithm. Thread-safe: ``add``
    may be called from several threads. The callback is invoked outside the
    internal lock, in the thread that called ``add``; callbacks triggered by
    different threads may therefore run concurrently. An exception raised by
    the callback propagates to the caller of ``add`` (the set is already
    removed from the queues and counted as matched).

    Args:
        inputs: input names, in the order used for the callback's dict.
        callback: receives ``{name: msg}`` with one message per input.
        mode: ``'exact'`` (identical stamps) or ``'approximate'`` (stamps within
            ``slop_ns`` of each other; ``max - min <= slop_ns``).
        slop_ns: maximum spread of an approximate set, nanoseconds (ignored,
            but still validated, in exact mode).
        queue_size: maximum pending messages per input; on overflow the oldest
            (smallest stamp) is dropped.

    Raises:
        ValueError: empty inputs, empty or duplicate names, unknown mode,
            ``slop_ns < 0`` or ``queue_size < 1``.
        TypeError: ``inputs`` is a plain string, a name is not a string,
            ``slop_ns``/``queue_size`` is not an int, or callback is not callable.
    """

    def __init__(self, inputs: Sequence[str], callback: Callable[[dict[str, Any]], None], *,
                 mode: str = 'approximate', slop_ns: int = 5_000_000, queue_size: int = 10) -> None:
        if isinstance(inputs, str):
            raise TypeError(f'inputs must be a sequence of names, not the string {inputs!r}')
        names = tuple(inputs)
        if not names:
            raise ValueError(f'inputs must not be empty: {inputs!r}')
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f'input names must be strings: {name!r}')
            if not name:
                raise ValueError(f'input names must be non-empty: {name!r}')
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f'duplicate input names: {duplicates!r}')
        if mode not in MODES:
            raise ValueError(f'unknown sync mode {mode!r}; expected one of {MODES!r}')
        if isinstance(slop_ns, bool) or not isinstance(slop_ns, int):
            raise TypeError(f'slop_ns must be an integer (nanoseconds): {slop_ns!r}')
        if slop_ns < 0:
            raise ValueError(f'slop_ns must be >= 0: {slop_ns!r}')
        if isinstance(queue_size, bool) or not isinstance(queue_size, int):
            raise TypeError(f'queue_size must be an integer: {queue_size!r}')
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1: {queue_size!r}')
        if not callable(callback):
            raise TypeError(f'callback must be callable: {callback!r}')

        self._inputs = names
        self._callback = callback
        self._mode = mode
        self._slop_ns = int(slop_ns)
        self._queue_size = int(queue_size)
        self._lock = threading.Lock()
        # Per input: sorted stamps and the messages in the same order.
        self._stamps: dict[str, list[int]] = {n: [] for n in names}
        self._msgs: dict[str, list[Any]] = {n: [] for n in names}
        # per input: the last emitted stamp (``newest``) and held past stamps
        self._guards: dict[str, StampGuard[Any]] = {
            n: StampGuard(confirm=max(3, 2 * self._queue_size)) for n in names}
        self._matched = 0
        self._dropped_unmatched = 0
        self._out_of_order = 0
        self._rejected = 0
        self._time_jumps = 0

    # ------------------------------------------------------------------ info
    @property
    def inputs(self) -> tuple[str, ...]:
        """The input names, in callback order."""
        return self._inputs

    @property
    def mode(self) -> str:
        """``'exact'`` or ``'approximate'``."""
        return self._mode

    @property
    def slop_ns(self) -> int:
        """Maximum spread of an emitted set (0 in exact mode)."""
        return 0 if self._mode == 'exact' else self._slop_ns

    @property
    def queue_size(self) -> int:
        """Maximum number of pending messages per input."""
        return self._queue_size

    @property
    def stats(self) -> SyncStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return SyncStats(matched=self._matched, dropped_unmatched=self._dropped_unmatched,
                             out_of_order=self._out_of_order, rejected=self._rejected,
                             time_jumps=self._time_jumps)

    def pending_stamps(self) -> dict[str, tuple[int, ...]]:
        """Stamps of the messages still waiting in each queue (for diagnostics)."""
        with self._lock:
            return {n: tuple(self._stamps[n]) for n in self._inputs}

    # --------------------------------------------------------------- control
    def reset(self) -> None:
        """Drop all queued messages and forget the last emitted stamps.

        Use after a time jump (e.g. a rosbag loop): afterwards, stamps older
        than the previous ones are accepted again. Discarded messages count as
        ``dropped_unmatched``; the other counters are kept.
        """
        with self._lock:
            self._reset_locked()

    def _reset_locked(self) -> None:
        for name in self._inputs:
            self._dropped_unmatched += len(self._stamps[name])
            self._stamps[name].clear()
            self._msgs[name].clear()
            self._guards[name].reset()

    def add(self, name: str, stamp_ns: int, msg: Any) -> None:
        """Queue ``msg`` of input ``name`` stamped ``stamp_ns`` (nanoseconds).

        If this completes a set, the callback is called synchronously (outside
        the lock) before ``add`` returns, and its exceptions propagate. After a time jump
        the held messages of every input are queued again, which may complete several sets:
        each is passed to the callback, oldest first.

        Raises:
            ValueError: unknown input name or negative stamp (counted as rejected).
            TypeError: stamp is not an integer (counted as rejected).
        """
        emitted: list[dict[str, Any]] = []
        with self._lock:
            if name not in self._stamps:
                self._rejected += 1
                raise ValueError(f'unknown sync input {name!r}; expected one of {self._inputs!r}')
            if isinstance(stamp_ns, bool):
                self._rejected += 1
                raise TypeError(f'stamp_ns must be an integer, got {stamp_ns!r}')
            try:
                stamp = operator.index(stamp_ns)
            except TypeError:
                self._rejected += 1
                raise TypeError(f'stamp_ns must be an integer, got {stamp_ns!r}') from None
            if stamp < 0:
                self._rejected += 1
                raise ValueError(f'stamp_ns must be >= 0, got {stamp}')
            # a held message counts as out of order until a jump confirms it
            decision = self._guards[name].check(stamp, msg, advance=False)
            counted_now = decision.verdict is Verdict.HELD
            if counted_now:
                self._out_of_order += 1
                held = {n: [s for s, _m in self._guards[n].held] for n in self._inputs}
                if not self._two_sets(held):
                    return
                decision.items = self._guards[name].confirm_jump()  # a whole frame came again
                decision.verdict = Verdict.JUMP
            if decision.verdict is Verdict.JUMP:  # time went back (bag loop): start over
                self._time_jumps += 1
                held = {n: self._guards[n].held for n in self._inputs if n != name}
                self._reset_locked()
                items = [(n, s, m) for n, pairs in held.items() for s, m in pairs]
                items += [(name, s, m) for s, m in decision.items]
                # the held ones were counted as out of order when they came
                self._out_of_order -= sum(len(v) for v in held.values()) + len(decision.items) - 1
                if counted_now:
                    self._out_of_order -= 1
                # the other inputs' held messages belong to the new pass too
                # queued again as if they arrived now, oldest first: each may complete a set
                for n, s, m in sorted(items, key=lambda x: x[1]):
                    self._queue_locked(n, s, m)
                    if (found := self._try_emit()) is not None:
                        emitted.append(found)
            else:
                self._queue_locked(name, stamp, msg)
                if (found := self._try_emit()) is not None:
                    emitted.append(found)
        for msgs in emitted:
            self._callback(msgs)

    # -------------------------------------------------------------- internal
    def _queue_locked(self, name: str, stamp: int, msg: Any) -> None:
        """Insert one message into its input's sorted queue (drop the oldest on overflow)."""
        stamps = self._stamps[name]
        msgs = self._msgs[name]
        pos = bisect.bisect_right(stamps, stamp)
        stamps.insert(pos, stamp)
        msgs.insert(pos, msg)
        if len(stamps) > self._queue_size:
            # Drop the oldest; this may be the message just added.
            del stamps[0]
            del msgs[0]
            self._dropped_unmatched += 1

    def _two_sets(self, queues: dict[str, list[int]]) -> bool:
        """Whether ``queues`` (sorted stamps per input) hold two complete sets, one after the
        other (two whole frames came again from the past: not a few late messages)."""
        found = 0
        lo_min = -1
        for lo in sorted({s for n in self._inputs for s in queues[n]}):
            if lo <= lo_min:
                continue
            chosen = []
            for name in self._inputs:
                i = bisect.bisect_left(queues[name], lo)
                if i == len(queues[name]) or queues[name][i] - lo > self.slop_ns:
                    break
                chosen.append(queues[name][i])
            else:
                found += 1
                if found == 2:
                    return True
                lo_min = max(chosen)  # the next set starts after this one
        return False

    def _find_best(self) -> dict[str, int] | None:
        """Return {input: index into its queue} of the tightest valid set, or None.

        Must be called with the lock held.
        """
        queues = self._stamps
        if any(not queues[n] for n in self._inputs):
            return None
        slop = self.slop_ns
        best_key: tuple[int, int] | None = None
        best_hi = 0
        candidates = sorted({s for n in self._inputs for s in queues[n]})
        for lo in candidates:
            hi = lo
            for name in self._inputs:
                stamps = queues[name]
                i = bisect.bisect_left(stamps, lo)
                if i == len(stamps) or stamps[i] - lo > slop:
                    break
                hi = max(hi, stamps[i])
            else:
                key = (hi - lo, -lo)  # smallest spread, then newest window
                if best_key is None or key < best_key:
                    best_key = key
                    best_hi = hi
        if best_key is None:
            return None
        # Newest message of every input inside the winning window [lo, hi].
        return {n: bisect.bisect_right(queues[n], best_hi) - 1 for n in self._inputs}

    def _try_emit(self) -> dict[str, Any] | None:
        """Emit (remove and return) the best set if one exists. Lock held."""
        choice = self._find_best()
        if choice is None:
            return None
        out: dict[str, Any] = {}
        for name in self._inputs:
            idx = choice[name]
            stamps = self._stamps[name]
            msgs = self._msgs[name]
            out[name] = msgs[idx]
            self._guards[name].newest = stamps[idx]
            # Everything up to and including idx goes; only idx was emitted.
            self._dropped_unmatched += idx
            del stamps[:idx + 1]
            del msgs[:idx + 1]
        self._matched += 1
        return out
