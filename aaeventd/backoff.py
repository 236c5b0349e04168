"""How every reconnecting thing in Python waits between attempts: one ``backoff()``.

The shape is websockets' ``backoff()`` (``src/websockets/client.py``): a first pause
drawn at random below ``initial_delay`` (RFC 6455 §7.2.3: clients that lost the same
server do not all come back at once), then ``min_delay`` growing by ``factor`` up
to ``max_delay``, for ever.  ``jitter`` spreads each of those later pauses too.

Who uses it, with which numbers:

* :class:`aaeventd.subscriber.Subscriber` (and so ``aaeventd watch``): the
  ``WATCH_*`` policy below.  The web UI (``static/app.js``) follows the same policy
  in its own copy of this generator; ``tests/test_backoff.py`` holds the two together.
* :mod:`aaeventd.client` (sources on the Unix socket): no first pause, then
  ``retry_initial`` (0.05 s) doubling up to ``retry_max`` (2 s), no jitter: a refused
  local connect costs nothing, and every pause is an outage the buffer must absorb.
  That module is meant to be vendored as one stdlib-only file, so it keeps a copy
  of this function, held to this one by ``tests/test_backoff.py``.

Standard library only; no I/O: the caller sleeps.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterator

# The policy of WebSocket watchers (Subscriber, `aaeventd watch`, the web UI), seconds.
WATCH_INITIAL_DELAY = 0.25
WATCH_MIN_DELAY = 0.25
WATCH_MAX_DELAY = 5.0
WATCH_FACTOR = 2.0
WATCH_JITTER = 0.2


def backoff(
    initial_delay: float = WATCH_INITIAL_DELAY,
    min_delay: float = WATCH_MIN_DELAY,
    max_delay: float = WATCH_MAX_DELAY,
    factor: float = WATCH_FACTOR,
    jitter: float = WATCH_JITTER,
    *,
    random: Callable[[], float] | None = None,
) -> Iterator[float]:
    """The pauses (seconds) before each reconnection attempt, without end.

    Start a new generator after each successful connection.

    Args:
        initial_delay: the first pause is ``random() * initial_delay``; 0 tries at once.
        min_delay: the second pause, before jitter.
        max_delay: the longest pause, before jitter.
        factor: how much each pause grows over the previous one.
        jitter: each pause after the first is scaled by a random factor in
            ``[1 - jitter, 1 + jitter)``; 0 for none.
        random: a source of floats in ``[0, 1)`` (tests pass a fixed one).

    Raises:
        ValueError: the numbers cannot make a growing, bounded series.
    """
    if not (initial_delay >= 0 and 0 < min_delay <= max_delay and factor > 1):
        raise ValueError(
            f"backoff needs 0 <= initial_delay, 0 < min_delay <= max_delay and factor > 1, "
            f"got {initial_delay}, {min_delay}, {max_delay}, {factor}"
        )
    if not 0 <= jitter < 1:
        raise ValueError(f"backoff jitter must be in [0, 1), got {jitter}")
    rand = _random.random if random is None else random

    # A generator inside, so that bad numbers raise here and not at the first next().
    def delays() -> Iterator[float]:
        yield rand() * initial_delay
        delay = min_delay
        while True:
            spread = 1 + jitter * (2 * rand() - 1) if jitter else 1.0
            yield min(delay, max_delay) * spread
            delay *= factor

    return delays()
