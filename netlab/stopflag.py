"""A daemon's stop flag that its SIGTERM handler can set.

The node agents (flanneld's and kube-proxy's roles) wait between turns of
their loop on the main thread, and stopped on SIGTERM by setting a
threading.Event from the signal handler. That can hang: Python runs a
signal handler in the main thread between two bytecodes, which may be
while that thread holds the Event's internal lock inside Event.wait (in
Condition._acquire_restore, after its wait timed out); Event.set then
waits for that lock, held by its own thread, forever. Seen in `down` of a
1000-pod lab: a kube-proxy stuck in futex_wait with Event.set on top of
Event.wait in its main thread's stack, killed 2 s later by SIGKILL.

StopFlag has the part of Event's interface the loops use (set, is_set,
wait) on a pipe instead of a lock: set() writes one byte (it never blocks
and takes no lock), wait() is a select(2) on the read end, which stays
readable for every waiter once set, as the self-pipe trick that asyncio's
signal handling uses.
"""

from __future__ import annotations

import os
import select


class StopFlag:
    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._set = False

    def set(self) -> None:
        """Safe in a signal handler, and from any thread."""
        if self._set:
            return
        self._set = True
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:  # a full pipe is readable already
            pass

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False if `timeout` seconds passed first (a signal ending the wait early is retried)."""
        if not self._set:
            select.select([self._r], [], [], timeout)  # PEP 475: EINTR retried with the time left
        return self._set

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._r = self._w = -1
