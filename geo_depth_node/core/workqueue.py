"""A bounded drop-oldest queue and a single worker thread (ROS-free).

The ROS executor thread must never block on the (slow) depth pipeline, and a
perception node wants the *newest* frame rather than a backlog, so the shell
puts synchronised sets into a :class:`DropOldestQueue` and one :class:`Worker`
processes them. When the queue is full, ``put`` discards the oldest item.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ['DropOldestQueue', 'Worker']

_LOG = logging.getLogger(__name__)

T = TypeVar('T')


class DropOldestQueue(Generic[T]):
    """Bounded FIFO between the executor thread (producer) and one worker (consumer).

    When full, ``put()`` discards the OLDEST item. ``None`` cannot be queued
    (``get`` uses it to signal a timeout or a closed, empty queue). After
    :meth:`close`, items already queued can still be taken with ``get``;
    new items are discarded (and counted in :attr:`dropped`).

    Args:
        maxsize: capacity, >= 1.

    Raises:
        ValueError: ``maxsize < 1``.
        TypeError: ``maxsize`` is not an integer.
    """

    def __init__(self, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f'maxsize must be an integer: {maxsize!r}')
        if maxsize < 1:
            raise ValueError(f'maxsize must be >= 1: {maxsize!r}')
        self._maxsize = maxsize
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._dropped = 0
        self._closed = False

    @property
    def maxsize(self) -> int:
        """Capacity of the queue."""
        return self._maxsize

    @property
    def dropped(self) -> int:
        """Items discarded without being taken: evicted as oldest, or put after close."""
        with self._cond:
            return self._dropped

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        with self._cond:
            return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> bool:
        """Append ``item``; never blocks.

        Returns:
            True if an older item was dropped to make room. After ``close`` the
            item itself is discarded (counted in ``dropped``) and False is returned.

        Raises:
            ValueError: ``item`` is None.
        """
        if item is None:
            raise ValueError('cannot queue None (it is the get() timeout/closed sentinel)')
        with self._cond:
            if self._closed:
                self._dropped += 1
                return False
            evicted = False
            if len(self._items) >= self._maxsize:
                self._items.popleft()
                self._dropped += 1
                evicted = True
            self._items.append(item)
            self._cond.notify()
            return evicted

    def get(self, timeout: float | None = None) -> T | None:
        """Remove and return the oldest item.

        Args:
            timeout: seconds to wait; None waits until an item arrives or the
                queue is closed; 0 does not wait.

        Returns:
            The item, or None on timeout or when the queue is closed and empty.

        Raises:
            ValueError: negative timeout.
        """
        if timeout is not None and timeout < 0:
            raise ValueError(f'timeout must be >= 0 or None: {timeout!r}')
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)
            return self._items.popleft()

    def close(self) -> None:
        """Refuse new items and wake all waiting ``get`` calls. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Worker(Generic[T]):
    """Runs ``handler(item)`` for every item of a DropOldestQueue on one daemon thread.

    A handler exception (any ``Exception``) does not stop the worker: it is
    passed to ``on_error`` (default: logged with ``logger.exception``) and the
    next item is processed. If ``on_error`` itself raises, that is logged too.
    The thread ends once the queue is closed and drained.

    Args:
        queue: the queue to consume.
        handler: called with each item, in FIFO order.
        name: thread name.
        on_error: called with the exception raised by ``handler``.
    """

    def __init__(self, queue: DropOldestQueue[T], handler: Callable[[T], None], *,
                 name: str = 'geo_depth_worker',
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        if not callable(handler):
            raise TypeError(f'handler must be callable: {handler!r}')
        if on_error is not None and not callable(on_error):
            raise TypeError(f'on_error must be callable or None: {on_error!r}')
        self._queue = queue
        self._handler = handler
        self._on_error = on_error if on_error is not None else self._log_error
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._processed = 0
        self._errors = 0

    @property
    def processed(self) -> int:
        """Items handled so far (including those whose handler raised)."""
        with self._lock:
            return self._processed

    @property
    def errors(self) -> int:
        """Handler exceptions so far."""
        with self._lock:
            return self._errors

    @property
    def is_alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the daemon thread.

        Raises:
            RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError(f'worker {self._name!r} already started')
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the queue and join the thread (items already queued are still handled).

        Logs a warning if the thread has not finished within ``timeout`` seconds.
        Safe to call more than once, before ``start``, or from the handler itself
        (then it only closes the queue).
        """
        self._queue.close()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            _LOG.warning('worker %r did not stop within %.1f s', self._name, timeout)

    @staticmethod
    def _log_error(exc: BaseException) -> None:
        _LOG.exception('worker handler failed: %r', exc, exc_info=exc)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:  # closed and drained
                return
            try:
                self._handler(item)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any handler error
                with self._lock:
                    self._errors += 1
                try:
                    self._on_error(exc)
                except Exception:  # noqa: BLE001 - a failing error hook must not kill the worker
                    _LOG.exception('worker on_error hook failed')
            finally:
                with self._lock:
                    self._processed += 1
