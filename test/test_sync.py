"""Tests of the ROS-free synchroniser and drop-oldest work queue."""
from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from typing import Any

import numpy as np
import pytest

from geo_depth_node.core.sync import SyncStats, TimeSynchronizer
from geo_depth_node.core.workqueue import DropOldestQueue, Worker

MS = 1_000_000  # nanoseconds per millisecond


class Recorder:
    """Thread-safe callback that records every emitted set."""

    def __init__(self) -> None:
        self.sets: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, msgs: dict[str, Any]) -> None:
        with self._lock:
            self.sets.append(dict(msgs))


def make_sync(inputs: tuple[str, ...] = ('left', 'right'),
              **kwargs: Any) -> tuple[TimeSynchronizer, Recorder]:
    rec = Recorder()
    return TimeSynchronizer(inputs, rec, **kwargs), rec


def feed(sync: TimeSynchronizer, events: list[tuple[str, int]]) -> None:
    """Add each (name, stamp) with the message (name, stamp)."""
    for name, stamp in events:
        sync.add(name, stamp, (name, stamp))


def stamps_of(sets: list[dict[str, Any]]) -> list[dict[str, int]]:
    return [{name: msg[1] for name, msg in s.items()} for s in sets]


# --------------------------------------------------------------- arguments
@pytest.mark.parametrize('inputs, kwargs, match', [
    ((), {}, r'\(\)'),
    (('left', 'left'), {}, "'left'"),
    (('left', ''), {}, "''"),
    (('left', 'right'), {'mode': 'fuzzy'}, "'fuzzy'"),
    (('left', 'right'), {'slop_ns': -1}, '-1'),
    (('left', 'right'), {'queue_size': 0}, ': 0'),
])
def test_constructor_rejects_bad_arguments(inputs: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TimeSynchronizer(inputs, lambda msgs: None, **kwargs)


@pytest.mark.parametrize('inputs, kwargs, match', [
    ('left', {}, "'left'"),
    (('left', 3), {}, '3'),
    (('left', 'right'), {'slop_ns': 0.005}, '0.005'),
    (('left', 'right'), {'queue_size': 2.5}, '2.5'),
])
def test_constructor_rejects_bad_types(inputs: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        TimeSynchronizer(inputs, lambda msgs: None, **kwargs)


def test_add_rejects_unknown_name_and_bad_stamps() -> None:
    sync, rec = make_sync()
    with pytest.raises(ValueError, match="'middle'"):
        sync.add('middle', 0, 'x')
    with pytest.raises(ValueError, match='-5'):
        sync.add('left', -5, 'x')
    with pytest.raises(TypeError, match='1.5'):
        sync.add('left', 1.5, 'x')  # type: ignore[arg-type]
    assert sync.stats == SyncStats(rejected=3)
    # numpy integers are accepted
    sync.add('left', np.int64(7), 'L')
    sync.add('right', np.uint64(7), 'R')
    assert rec.sets == [{'left': 'L', 'right': 'R'}]
    assert sync.stats == SyncStats(matched=1, rejected=3)


# ------------------------------------------------------------------- exact
def test_exact_pairs_identical_stamps_only() -> None:
    sync, rec = make_sync(mode='exact', slop_ns=10 * MS)
    feed(sync, [('left', 100), ('right', 100)])
    assert rec.sets == [{'left': ('left', 100), 'right': ('right', 100)}]
    assert list(rec.sets[0]) == ['left', 'right']
    feed(sync, [('left', 200), ('right', 201)])  # 1 ns apart: no exact match
    assert len(rec.sets) == 1
    feed(sync, [('right', 300), ('left', 300)])
    assert stamps_of(rec.sets) == [{'left': 100, 'right': 100}, {'left': 300, 'right': 300}]
    # left 200 and right 201 were evicted by the 300 set
    assert sync.stats == SyncStats(matched=2, dropped_unmatched=2)
    assert sync.pending_stamps() == {'left': (), 'right': ()}


# ------------------------------------------------------------- approximate
def test_approximate_pairs_within_slop_and_refuses_beyond() -> None:
    sync, rec = make_sync(slop_ns=5 * MS)
    feed(sync, [('left', 100 * MS), ('right', 104 * MS)])       # spread 4 ms
    feed(sync, [('left', 200 * MS), ('right', 205 * MS)])       # spread exactly the slop
    feed(sync, [('left', 300 * MS), ('right', 305 * MS + 1)])   # 1 ns beyond the slop
    assert stamps_of(rec.sets) == [
        {'left': 100 * MS, 'right': 104 * MS},
        {'left': 200 * MS, 'right': 205 * MS},
    ]
    assert sync.pending_stamps() == {'left': (300 * MS,), 'right': (305 * MS + 1,)}
    assert sync.stats == SyncStats(matched=2)


def test_approximate_prefers_tightest_set() -> None:
    sync, rec = make_sync(slop_ns=5)
    feed(sync, [('left', 100), ('left', 103), ('right', 104)])
    assert stamps_of(rec.sets) == [{'left': 103, 'right': 104}]
    assert sync.stats == SyncStats(matched=1, dropped_unmatched=1)  # left 100


def test_approximate_equal_spread_prefers_newest() -> None:
    sync, rec = make_sync(slop_ns=5)
    # (left 100, right 104) and (right 104, left 108) both have spread 4.
    feed(sync, [('left', 100), ('left', 108), ('right', 104)])
    assert stamps_of(rec.sets) == [{'left': 108, 'right': 104}]
    assert sync.stats == SyncStats(matched=1, dropped_unmatched=1)


def test_exact_mode_ignores_slop() -> None:
    sync, rec = make_sync(mode='exact', slop_ns=1000)
    assert sync.slop_ns == 0
    feed(sync, [('left', 100), ('right', 101)])
    assert rec.sets == []


ORDERS = list(itertools.permutations(['left', 'right', 'info']))


@pytest.mark.parametrize('order', ORDERS, ids=['-'.join(o) for o in ORDERS])
def test_any_arrival_order_gives_the_same_set(order: tuple[str, ...]) -> None:
    stamps = {'left': 1000 * MS, 'right': 1000 * MS + 2 * MS, 'info': 1000 * MS - 1 * MS}
    sync, rec = make_sync(('left', 'right', 'info'), slop_ns=5 * MS)
    for i, name in enumerate(order):
        sync.add(name, stamps[name], (name, stamps[name]))
        assert len(rec.sets) == (1 if i == 2 else 0)
    assert stamps_of(rec.sets) == [stamps]
    assert list(rec.sets[0]) == ['left', 'right', 'info']


def test_camera_info_arriving_late() -> None:
    sync, rec = make_sync(('left', 'right', 'info'), mode='exact')
    feed(sync, [('left', 10), ('right', 10), ('left', 20), ('right', 20), ('left', 30)])
    assert rec.sets == []
    feed(sync, [('info', 10)])
    feed(sync, [('info', 20)])
    feed(sync, [('right', 30), ('info', 30)])
    assert [s['left'][1] for s in rec.sets] == [10, 20, 30]
    assert sync.stats == SyncStats(matched=3)


def test_missing_message_drops_older_messages_of_other_inputs() -> None:
    sync, rec = make_sync(('left', 'right', 'info'), slop_ns=1 * MS)
    events = []
    for t in (0, 100, 200):
        events += [('left', t * MS), ('right', t * MS)]
        if t == 200:  # info lost for frames 0 and 100
            events.append(('info', t * MS))
    feed(sync, events)
    assert stamps_of(rec.sets) == [{'left': 200 * MS, 'right': 200 * MS, 'info': 200 * MS}]
    assert sync.stats == SyncStats(matched=1, dropped_unmatched=4)
    assert sync.pending_stamps() == {'left': (), 'right': (), 'info': ()}


def test_missing_message_is_eventually_dropped_by_overflow() -> None:
    sync, rec = make_sync(mode='exact', queue_size=3)
    feed(sync, [('left', 5)])                        # right 5 never arrives
    feed(sync, [('left', t) for t in (10, 20, 30)])  # overflow evicts left 5
    assert sync.stats == SyncStats(dropped_unmatched=1)
    assert sync.pending_stamps() == {'left': (10, 20, 30), 'right': ()}
    assert rec.sets == []


def test_queue_overflow_drops_oldest_and_counts() -> None:
    sync, rec = make_sync(mode='exact', queue_size=3)
    feed(sync, [('left', t) for t in range(5)])
    assert sync.pending_stamps()['left'] == (2, 3, 4)
    assert sync.stats == SyncStats(dropped_unmatched=2)
    feed(sync, [('right', 2)])
    assert stamps_of(rec.sets) == [{'left': 2, 'right': 2}]
    assert sync.pending_stamps() == {'left': (3, 4), 'right': ()}
    assert sync.stats == SyncStats(matched=1, dropped_unmatched=2)


def test_overflow_can_drop_the_message_just_added() -> None:
    sync, _ = make_sync(mode='exact', queue_size=2)
    feed(sync, [('left', 10), ('left', 20), ('left', 5)])
    assert sync.pending_stamps()['left'] == (10, 20)
    assert sync.stats == SyncStats(dropped_unmatched=1)


def test_out_of_order_messages_are_rejected() -> None:
    sync, rec = make_sync(mode='exact')
    feed(sync, [('left', 100), ('right', 100)])
    feed(sync, [('left', 50)])    # older than the last emitted left
    feed(sync, [('right', 100)])  # as old as the last emitted right
    assert sync.stats == SyncStats(matched=1, out_of_order=2)
    assert sync.pending_stamps() == {'left': (), 'right': ()}
    # Out of order *within* the queue (but newer than emitted) is fine: kept sorted.
    feed(sync, [('left', 300), ('left', 200)])
    assert sync.pending_stamps()['left'] == (200, 300)
    feed(sync, [('right', 200)])
    assert stamps_of(rec.sets)[-1] == {'left': 200, 'right': 200}
    assert sync.stats == SyncStats(matched=2, out_of_order=2)


def test_reset_drops_queued_and_accepts_older_stamps() -> None:
    sync, rec = make_sync(mode='exact')
    feed(sync, [('left', 100), ('right', 100), ('left', 200), ('left', 300)])
    sync.reset()
    assert sync.pending_stamps() == {'left': (), 'right': ()}
    assert sync.stats == SyncStats(matched=1, dropped_unmatched=2)
    feed(sync, [('left', 10), ('right', 10)])  # bag loop: time went back
    assert stamps_of(rec.sets) == [{'left': 100, 'right': 100}, {'left': 10, 'right': 10}]
    assert sync.stats.out_of_order == 0


def test_a_time_jump_back_starts_over() -> None:
    """Messages that go on in the past are a bag loop, not late messages: the queues reset
    and the new pass is matched (before, every later message was dropped as out of order, for
    ever). A single late message is still out of order."""
    s = 1_000_000_000
    TIME_JUMP_BACK_NS = s
    sync, rec = make_sync(mode='exact')
    feed(sync, [('left', 10 * s), ('right', 10 * s), ('left', 20 * s), ('right', 20 * s)])
    feed(sync, [('left', 20 * s - TIME_JUMP_BACK_NS // 2)])  # late, not a jump
    assert sync.stats.out_of_order == 1 and sync.stats.time_jumps == 0
    feed(sync, [('left', 10 * s), ('right', 10 * s), ('left', 11 * s), ('right', 11 * s)])
    assert stamps_of(rec.sets)[-2:] == [{'left': 10 * s, 'right': 10 * s},
                                       {'left': 11 * s, 'right': 11 * s}]
    assert sync.stats.time_jumps == 1 and sync.stats.out_of_order == 1
    assert sync.stats.matched == 4


# ----------------------------------------------------------------- callback
def test_callback_exception_propagates_and_sync_keeps_working() -> None:
    calls: list[dict[str, Any]] = []

    def callback(msgs: dict[str, Any]) -> None:
        calls.append(msgs)
        if len(calls) == 1:
            raise RuntimeError('boom')

    sync = TimeSynchronizer(('left', 'right'), callback, mode='exact')
    sync.add('left', 1, 'L1')
    with pytest.raises(RuntimeError, match='boom'):
        sync.add('right', 1, 'R1')
    sync.add('left', 2, 'L2')
    sync.add('right', 2, 'R2')
    assert calls == [{'left': 'L1', 'right': 'R1'}, {'left': 'L2', 'right': 'R2'}]
    assert sync.stats == SyncStats(matched=2)


def test_callback_runs_outside_the_lock() -> None:
    """The callback may call back into the synchroniser without deadlocking."""
    seen: list[Any] = []
    sync: TimeSynchronizer

    def callback(msgs: dict[str, Any]) -> None:
        seen.append(sync.stats)
        sync.add('left', 99, 'inner')  # re-entrant add from the callback

    sync = TimeSynchronizer(('left', 'right'), callback, mode='exact')

    def run() -> None:
        sync.add('left', 1, 'L')
        sync.add('right', 1, 'R')

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(2.0)
    assert not thread.is_alive(), 'callback deadlocked: it is called with the lock held'
    assert seen == [SyncStats(matched=1)]
    assert sync.pending_stamps()['left'] == (99,)


# ----------------------------------------------------------- property test
def _valid_set_exists(pending: dict[str, tuple[int, ...]], slop: int) -> bool:
    """Independent oracle: is there one stamp per input with max - min <= slop?"""
    all_stamps = {s for stamps in pending.values() for s in stamps}
    return any(all(any(lo <= s <= lo + slop for s in stamps) for stamps in pending.values())
               for lo in all_stamps)


def _min_spread(pending: dict[str, tuple[int, ...]], slop: int) -> int | None:
    spreads = [max(c) - min(c) for c in itertools.product(*pending.values())
               if max(c) - min(c) <= slop]
    return min(spreads) if spreads else None


def test_random_sequences_never_violate_invariants() -> None:
    rng = random.Random(20240607)
    for _ in range(300):
        n_inputs = rng.choice((2, 3))
        names = ('left', 'right', 'info')[:n_inputs]
        mode = rng.choice(('exact', 'approximate'))
        slop = rng.choice((0, 2, 5, 10))
        queue_size = rng.randint(1, 5)
        period = rng.choice((5, 10, 20))
        sync, rec = make_sync(names, mode=mode, slop_ns=slop, queue_size=queue_size)
        eff_slop = 0 if mode == 'exact' else slop

        # Frames with per-input jitter, random losses and shuffled arrival.
        events: list[tuple[str, int, tuple[str, int, int]]] = []
        uid = 0
        for frame in range(rng.randint(5, 25)):
            for name in names:
                if rng.random() < 0.15:
                    continue
                jitter = 0 if rng.random() < 0.4 else rng.randint(-6, 6)
                stamp = max(0, 100 + frame * period + jitter)
                uid += 1
                events.append((name, stamp, (name, stamp, uid)))
        for i in range(len(events) - 1):  # local reordering
            if rng.random() < 0.3:
                events[i], events[i + 1] = events[i + 1], events[i]

        for name, stamp, msg in events:
            before = sync.pending_stamps()
            n_sets = len(rec.sets)
            sync.add(name, stamp, msg)
            assert len(rec.sets) - n_sets in (0, 1)
            if len(rec.sets) > n_sets:
                # The emitted set is the tightest one available.
                candidates = dict(before)
                candidates[name] = before[name] + (stamp,)
                got = [m[1] for m in rec.sets[-1].values()]
                assert max(got) - min(got) == _min_spread(candidates, eff_slop)
            # Eager: nothing that could be emitted is left waiting.
            assert not _valid_set_exists(sync.pending_stamps(), eff_slop)

        seen_uids: set[int] = set()
        last: dict[str, int] = {}
        for s in rec.sets:
            assert list(s) == list(names)
            got = [m[1] for m in s.values()]
            assert max(got) - min(got) <= eff_slop
            for name, (msg_name, msg_stamp, msg_uid) in s.items():
                assert msg_name == name
                assert msg_uid not in seen_uids, 'message emitted twice'
                seen_uids.add(msg_uid)
                assert msg_stamp > last.get(name, -1), 'emitted stamps must strictly increase'
                last[name] = msg_stamp
        st = sync.stats
        pending = sum(len(v) for v in sync.pending_stamps().values())
        assert st.matched == len(rec.sets)
        assert st.rejected == 0
        assert st.matched * n_inputs + st.dropped_unmatched + st.out_of_order + pending == len(events)


# ------------------------------------------------------------ thread safety
def test_four_producer_threads_exact() -> None:
    names = ('a', 'b', 'c', 'd')
    n = 400
    sync, rec = make_sync(names, mode='exact', queue_size=n)
    barrier = threading.Barrier(len(names))

    def produce(name: str) -> None:
        barrier.wait()
        for t in range(n):
            sync.add(name, t, (name, t))

    threads = [threading.Thread(target=produce, args=(nm,)) for nm in names]
    for th in threads:
        th.start()
    for th in threads:
        th.join(5.0)
    assert sorted(s['a'][1] for s in rec.sets) == list(range(n))
    for s in rec.sets:
        assert {m[1] for m in s.values()} == {s['a'][1]}
    assert sync.stats == SyncStats(matched=n)


def test_four_producer_threads_random_inputs() -> None:
    names = ('left', 'right', 'info')
    sync, rec = make_sync(names, slop_ns=3, queue_size=4)
    barrier = threading.Barrier(4)
    per_thread = 300

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for k in range(per_thread):
            name = rng.choice(names)
            stamp = k * 2 + rng.randint(0, 4)
            sync.add(name, stamp, (name, stamp, seed, k))

    threads = [threading.Thread(target=produce, args=(seed,)) for seed in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(5.0)
    assert not any(th.is_alive() for th in threads)
    emitted = [m for s in rec.sets for m in s.values()]
    assert len(emitted) == len(set(emitted)), 'message emitted twice'
    for s in rec.sets:
        got = [m[1] for m in s.values()]
        assert max(got) - min(got) <= 3
    st = sync.stats
    pending = sum(len(v) for v in sync.pending_stamps().values())
    assert st.matched == len(rec.sets) > 0
    assert st.matched * 3 + st.dropped_unmatched + st.out_of_order + pending == 4 * per_thread


# ============================================================ work queue
def test_queue_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match='0'):
        DropOldestQueue(0)
    q: DropOldestQueue[int] = DropOldestQueue(1)
    with pytest.raises(ValueError, match='None'):
        q.put(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='-1'):
        q.get(timeout=-1)


def test_queue_drops_oldest() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(3)
    assert [q.put(i) for i in range(1, 6)] == [False, False, False, True, True]
    assert q.dropped == 2
    assert len(q) == 3
    assert [q.get(timeout=0) for _ in range(4)] == [3, 4, 5, None]
    assert len(q) == 0
    assert q.dropped == 2


def test_queue_get_timeout_returns_none() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(2)
    t0 = time.monotonic()
    assert q.get(timeout=0.05) is None
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 1.0
    assert q.get(timeout=0) is None


def test_queue_close_wakes_blocked_get() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(2)
    result: list[Any] = []
    started = threading.Event()

    def consumer() -> None:
        started.set()
        result.append(q.get())  # no timeout: blocks until close

    th = threading.Thread(target=consumer, daemon=True)
    th.start()
    started.wait(1.0)
    time.sleep(0.05)
    assert th.is_alive()
    q.close()
    th.join(1.0)
    assert not th.is_alive()
    assert result == [None]
    assert q.closed


def test_queue_close_keeps_items_and_refuses_new_ones() -> None:
    q: DropOldestQueue[str] = DropOldestQueue(3)
    q.put('a')
    q.put('b')
    q.close()
    assert q.put('c') is False
    assert q.dropped == 1
    assert [q.get(), q.get(), q.get()] == ['a', 'b', None]


def test_worker_survives_handler_exception() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(10)
    handled: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def handler(item: int) -> None:
        if item == 2:
            raise ValueError(f'bad item {item}')
        handled.append(item)
        if item == 5:
            done.set()

    worker = Worker(q, handler, name='test_worker', on_error=errors.append)
    worker.start()
    for i in range(1, 6):
        q.put(i)
    assert done.wait(1.0)
    assert worker.is_alive
    assert handled == [1, 3, 4, 5]
    assert [str(e) for e in errors] == ['bad item 2']
    assert worker.errors == 1
    assert worker.processed == 5
    worker.stop()
    assert not worker.is_alive


def test_worker_default_on_error_logs(caplog: pytest.LogCaptureFixture) -> None:
    q: DropOldestQueue[int] = DropOldestQueue(2)

    def handler(item: int) -> None:
        raise RuntimeError(f'kaputt {item}')

    worker = Worker(q, handler)
    q.put(7)
    with caplog.at_level(logging.ERROR, logger='geo_depth_node.core.workqueue'):
        worker.start()
        worker.stop(timeout=1.0)  # drains the queued item, then joins
    assert not worker.is_alive
    records = [r for r in caplog.records if r.name == 'geo_depth_node.core.workqueue']
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert str(records[0].exc_info[1]) == 'kaputt 7'


def test_worker_stop_before_start_closes_queue() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(5)
    worker = Worker(q, lambda item: None)
    worker.stop()
    assert q.closed
    assert not worker.is_alive


def test_worker_stop_joins_and_drains() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(5)
    handled: list[int] = []
    worker = Worker(q, handled.append, name='drain')
    for i in range(3):
        q.put(i)
    worker.start()
    with pytest.raises(RuntimeError, match='drain'):
        worker.start()
    t0 = time.monotonic()
    worker.stop(timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    assert not worker.is_alive
    assert handled == [0, 1, 2]
    assert q.closed
    worker.stop()  # idempotent


def test_a_short_looped_bag_is_processed_every_pass() -> None:
    """A bag whose images span less than a second, played with --loop: every pass is
    matched (before, only the first pass was: the jump back of 0.2 s was taken for late
    messages and everything after it was dropped as out of order)."""
    names = ('left_image', 'left_info', 'right_image', 'right_info')
    sync, rec = make_sync(names, mode='exact')
    pass_stamps = [1_000_000_000 + k * 100_000_000 for k in range(3)]  # 0.2 s of images
    for _ in range(5):
        for st in pass_stamps:
            feed(sync, [(n, st) for n in names])
    assert len(rec.sets) == 15
    assert [s['left_image'][1] for s in rec.sets] == pass_stamps * 5
    assert sync.stats.time_jumps == 4 and sync.stats.out_of_order == 0
    assert sync.stats.dropped_unmatched == 0


def test_one_stray_stamp_does_not_reset_the_synchroniser() -> None:
    """A single message stamped in 1970 (or 0) between good frames is out of order: the
    frames before and after it are all matched, no time jump."""
    s = 1_000_000_000
    sync, rec = make_sync(mode='exact')
    feed(sync, [('left', 100 * s), ('right', 100 * s)])
    feed(sync, [('left', 1), ('right', 101 * s), ('left', 101 * s)])
    feed(sync, [('left', 102 * s), ('right', 102 * s)])
    assert [x['left'][1] for x in rec.sets] == [100 * s, 101 * s, 102 * s]
    assert sync.stats.time_jumps == 0 and sync.stats.out_of_order == 1


def test_a_future_stamped_frame_does_not_stall_the_stream() -> None:
    """One whole frame stamped a year ahead, then the stream at the right time: after two
    frames the synchroniser goes on (a jump), and those frames are matched, not lost."""
    s = 1_000_000_000
    sync, rec = make_sync(mode='exact')
    feed(sync, [('left', 100 * s), ('right', 100 * s)])
    future = 100 * s + 365 * 86400 * s
    feed(sync, [('left', future), ('right', future)])
    for k in range(1, 5):
        feed(sync, [('left', (100 + k) * s), ('right', (100 + k) * s)])
    assert [x['left'][1] for x in rec.sets] == [100 * s, future] + [(100 + k) * s
                                                                  for k in range(1, 5)]
    assert sync.stats.time_jumps == 1
