"""A backend's circuit breaker: pybreaker's state machine, fed from the completion hook.

    closed --failure_threshold consecutive failures--> open
    open --reset_timeout (a timer, so the pool's snapshot picks the change up)--> half_open
    half_open --the one trial request succeeds--> closed;  --it fails--> open

pybreaker is synchronous: the completion hook reports each outcome with `record`, which runs
a no-op through `CircuitBreaker.call` so pybreaker does its own counting and transitions; a
listener turns each transition into one log line and a rebuild of the candidates snapshot.
SPEC §2: the breaker counts real requests, the health checks probe. An open breaker keeps its
backend out until reset_timeout has passed or, sooner, until the health checks have passed
`rise` times in a row since it opened (a restarted backend is not kept out for a minute, as
HAProxy's `on-error mark-down` and Envoy's uneject on a passing active check); failing probes
never shorten it.

With workers (SPEC §6) a breaker is the balancer's: `on_transition` tells the supervisor when
this worker's breaker opens or closes, and `adopt` takes another worker's opening or closing
(passed on by the supervisor) without telling anyone again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal

import pybreaker

log = logging.getLogger("balancer.breaker")

BreakerState = Literal["closed", "open", "half_open"]
_STATES: dict[str, BreakerState] = {"closed": "closed", "open": "open", "half-open": "half_open"}


class _Failure(Exception):
    """What `record(False)` raises inside pybreaker so that it counts a failure."""


def _succeed() -> None:
    return None


def _fail() -> None:
    raise _Failure


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        self._breaker._changed(_STATES.get(getattr(old, "name", ""), "closed"), _STATES[new.name])


class Breaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int,
        reset_timeout: float,
        *,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[], None],
        rise: int = 2,
        on_transition: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.reset_timeout = reset_timeout
        self.rise = rise  # health_check.rise: passing probes that shorten an open breaker
        self._passes = 0  # consecutive passing probes since it opened
        self._opened_at = 0.0
        self._loop = loop
        self._on_change = on_change
        self._on_transition = on_transition
        self._adopting = False  # the transition under way is another worker's
        # Transitions that happened here (not another worker's), by the state entered.
        self.transitions = {"open": 0, "half_open": 0, "closed": 0}
        self._timer: asyncio.TimerHandle | None = None
        self.trial_in_flight = False
        self._failures_counted = False  # pybreaker's fail_counter > 0 (a property, and slow)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=failure_threshold, reset_timeout=reset_timeout, name=name
        )
        self._cb.add_listener(_Listener(self))
        self.state: BreakerState = "closed"

    def __repr__(self) -> str:
        trial = " trial in flight" if self.trial_in_flight else ""
        return f"<Breaker {self.name} {self.state} failures={self._cb.fail_counter}{trial}>"

    @property
    def admits_new(self) -> bool:
        """Whether a new request may go through: closed, or half-open with no trial out."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self.trial_in_flight)

    def configure(self, failure_threshold: int, reset_timeout: float, rise: int) -> None:
        """New settings from a reload; the state and its counts stay (an open breaker keeps
        its timer: the new reset_timeout applies from its next opening)."""
        self._cb.fail_max = failure_threshold
        self._cb.reset_timeout = reset_timeout
        self.reset_timeout = reset_timeout
        self.rise = rise

    @property
    def retry_in_seconds(self) -> float:
        """While open: the seconds until reset_timeout lets a trial through, else 0."""
        if self.state != "open":
            return 0.0
        left = self._opened_at + self.reset_timeout - self._loop.time()
        return min(self.reset_timeout, max(left, 0.001))

    def probe_result(self, passed: bool) -> None:
        """A health check's verdict: `rise` passes in a row since it opened half-open it."""
        if self.state != "open":
            return
        if not passed:
            self._passes = 0
            return
        self._passes += 1
        if self._passes >= self.rise:
            log.info(
                "backend %s: health checks passed %d times since the breaker opened",
                self.name,
                self._passes,
            )
            self._half_open()

    def adopt(self, state: BreakerState) -> None:
        """Another worker's breaker opened or closed: so does this one (half-open is each
        worker's own, by its timer or the health checks every worker hears)."""
        if state == self.state or state == "half_open":
            return
        self._adopting = True
        try:
            if state == "open":
                self._cb.open()
            else:
                self._cb.close()
        finally:
            self._adopting = False
        self._failures_counted = self._cb.fail_counter > 0

    @property
    def consecutive_failures(self) -> int:
        return int(self._cb.fail_counter)

    def begin(self) -> bool:
        """A request goes out; returns whether it is the half-open breaker's one trial."""
        if self.state == "half_open" and not self.trial_in_flight:
            self.trial_in_flight = True
            self._on_change()
            return True
        return False

    def abandon_trial(self) -> None:
        """The trial ended without an outcome (cancelled): the next request is the trial."""
        if self.trial_in_flight:
            self.trial_in_flight = False
            self._on_change()

    def record(self, ok: bool) -> None:
        """The outcome of one attempt: a success, or a failure the backend is to blame for."""
        if ok and self.state == "closed" and not self._failures_counted:
            return  # the common case changes nothing: skip pybreaker's lock and bookkeeping
        try:
            self._cb.call(_succeed if ok else _fail)
        except (_Failure, pybreaker.CircuitBreakerError):
            pass
        self._failures_counted = self._cb.fail_counter > 0
        if self.trial_in_flight and self.state != "half_open":
            self.trial_in_flight = False
            self._on_change()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _changed(self, old: BreakerState, new: BreakerState) -> None:
        self.state = new
        if new == old:
            return
        if self._adopting:  # logged once, by the worker where it happened
            log.debug("backend %s: breaker %s -> %s (another worker's)", self.name, old, new)
        else:
            self.transitions[new] += 1
            log.log(
                logging.WARNING if new == "open" else logging.INFO,
                "backend %s: circuit breaker %s -> %s%s",
                self.name,
                old,
                new,
                f" (for {self.reset_timeout:g}s)" if new == "open" else "",
            )
            if self._on_transition is not None and new != "half_open":
                self._on_transition(new)
        self.trial_in_flight = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if new == "open":
            self._passes = 0
            self._opened_at = self._loop.time()
            self._timer = self._loop.call_later(self.reset_timeout, self._half_open)
        self._on_change()

    def _half_open(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.state == "open":
            self._cb.half_open()
