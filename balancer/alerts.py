"""Alerts (SPEC §2 `alerts`, §6): rules judged in process every `interval`, shown at GET
/alerts and as `balancer_alert_firing`, POSTed to the webhook on firing and on resolved.

Three parts, each testable alone:

- the rules, as data: `RULES` maps each rule name of SPEC §2 to a small pure function of a
  `View` of the balancer (each backend's health, breaker and routability, whether the session
  store answers, and the window's traffic Figures) and the rule's settings, which returns the
  alerts that hold now, each with its backend (None: the whole balancer) and its value;
- `Alerts`, the engine: `evaluate(view, now)` compares what holds with what is firing, fires
  and resolves (each change logged once: WARNING firing, INFO resolved), keeps the firing set
  and a bounded list of the recently resolved, and returns the webhook notices to send, with
  the cooldown applied (below). Pure but for its logging: no I/O, no clock of its own;
- `AlertService`, the loop: every `interval` it reads the settings (a reload applies at the
  next evaluation), builds the view and hands the notices to the webhook (alert_webhook.py),
  whose queue is drained by a task of its own, so neither the evaluation nor a request ever
  waits for a receiver.

One process runs the service over its own /status and sampler; with workers the supervisor
runs it over the merged /status and its sampler of the summed counters, and the workers
evaluate nothing: one alert per condition for the whole balancer.

Cooldown (SPEC §6): an alert is notified once when it starts firing and once when it resolves.
A new `firing` of the same rule and backend within `cooldown[severity]` of the previous one
sent waits: it is sent once the cooldown has passed if it still fires then, and not at all if
it resolved meanwhile (nor its `resolved`). Every `firing` sent gets its `resolved`, to the
URL the firing went to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from balancer.config import AlertRuleConfig, AlertsConfig
from balancer.window import Figures

log = logging.getLogger("balancer.alerts")

RECENT = 50  # resolved alerts kept for GET /alerts, newest first
DISABLED: Mapping[str, Any] = {"firing": [], "recent": [], "enabled": False}  # alerts.enabled false
BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}  # as the metric


# --- the view of the balancer the rules judge ----------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendView:
    name: str
    health: str  # healthy, unhealthy: what the health checks say
    breaker: str  # closed, half_open, open
    routable: bool  # would take a new request now (/status `routable`)


Window = Callable[[float], Mapping[str, Figures]]  # seconds -> figures by backend name


def _no_traffic(seconds: float) -> Mapping[str, Figures]:
    return {}


@dataclass(frozen=True, slots=True)
class View:
    backends: tuple[BackendView, ...] = ()
    store_available: bool = True
    window: Window = _no_traffic  # the sampler's `over`


def view_of(status: Mapping[str, Any], window: Window, names: Collection[str]) -> View:
    """The view of a /status answer (one process', or the supervisor's merge): the backends
    of the running config (`names`: not those a reload removed, still finishing requests)."""
    backends = tuple(
        BackendView(
            str(b.get("name")),
            str(b.get("health", "healthy")),
            str(b.get("breaker", "closed")),
            bool(b.get("routable", False)),
        )
        for b in status.get("backends", [])
        if b.get("name") in names
    )
    store = status.get("sticky", {}).get("available", True)
    return View(backends, bool(store), window)


# --- the rules -------------------------------------------------------------------------------

Holding = tuple[str | None, float]  # (backend, or None for the whole balancer; value)
Rule = Callable[[View, AlertRuleConfig], Iterable[Holding]]


def backend_down(view: View, rule: AlertRuleConfig) -> Iterable[Holding]:
    """A backend the health checks call unhealthy, whatever its mode; value 0 (healthy)."""
    return [(b.name, 0.0) for b in view.backends if b.health == "unhealthy"]


def no_backend(view: View, rule: AlertRuleConfig) -> Iterable[Holding]:
    """Nothing routable: every backend unhealthy, disabled, draining, open, weight 0 or at
    its cap; value 0 (routable backends)."""
    return [] if any(b.routable for b in view.backends) else [(None, 0.0)]


def breaker_open(view: View, rule: AlertRuleConfig) -> Iterable[Holding]:
    """A breaker not closed (open, or half-open awaiting its trial): from its opening to its
    closing; value 2 open, 1 half-open."""
    states = BREAKER_STATES
    return [(b.name, states.get(b.breaker, 2.0)) for b in view.backends if b.breaker != "closed"]


def _threshold(rule: AlertRuleConfig) -> tuple[float, float]:
    assert rule.above is not None and rule.over is not None
    return rule.above, rule.over


def error_ratio(view: View, rule: AlertRuleConfig) -> Iterable[Holding]:
    """A backend whose 5xx answers are more than `above` of its answers over `over`; no
    minimum of requests (one 500 out of one is 1.0)."""
    above, over = _threshold(rule)
    figures = view.window(over)
    found = []
    for backend in view.backends:
        one = figures.get(backend.name)
        if one is not None and one.requests and one.error_ratio > above:
            found.append((backend.name, one.error_ratio))
    return found


def latency(q: float) -> Rule:
    """A backend whose q-quantile of request durations over `over` is above `above` seconds."""

    def rule(view: View, rule: AlertRuleConfig) -> Iterable[Holding]:
        above, over = _threshold(rule)
        figures = view.window(over)
        found = []
        for backend in view.backends:
            one = figures.get(backend.name)
            value = one.quantile(q) if one is not None else None
            if value is not None and value > above:
                found.append((backend.name, value))
        return found

    return rule


def store_down(view: View, rule: AlertRuleConfig) -> Iterable[Holding]:
    """The session store does not answer (Redis unreachable); value 0 (available)."""
    return [] if view.store_available else [(None, 0.0)]


# Each rule of SPEC §2 (config_sections.ALERT_RULES) by name.
RULES: dict[str, Rule] = {
    "backend_down": backend_down,
    "no_backend": no_backend,
    "breaker_open": breaker_open,
    "error_ratio": error_ratio,
    "latency_p95": latency(0.95),
    "latency_p99": latency(0.99),
    "store_down": store_down,
}


# --- the engine ------------------------------------------------------------------------------

Key = tuple[str, str, str | None]  # rule, severity, backend: one alert


@dataclass(slots=True)
class Alert:
    rule: str
    severity: str
    backend: str | None
    value: float  # the latest while it fires
    since: float  # epoch seconds
    resolved: float | None = None
    notified: str = ""  # the webhook URL its `firing` went to; "" while none was sent

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "rule": self.rule,
            "severity": self.severity,
            "backend": self.backend,
            "value": round(self.value, 6),
            "since": round(self.since, 3),
        }
        if self.resolved is not None:
            body["resolved"] = round(self.resolved, 3)
        return body

    def notice(self, status: str) -> Notice:
        """What the webhook gets (SPEC §6): the alert and whether it fires or resolved."""
        body = {"status": status, **self.as_json()}
        body.pop("resolved", None)
        return Notice(self.notified, body)


@dataclass(frozen=True, slots=True)
class Notice:
    url: str
    body: dict[str, Any]


def _shown(rule: str, value: float) -> str:
    if rule.startswith("latency"):
        return f"{value * 1000:.1f}ms"
    return f"{value:.4g}"


def _where(alert: Alert) -> str:
    return f" on {alert.backend}" if alert.backend is not None else ""


class Alerts:
    """The firing set, the recently resolved, and what to notify (module docstring)."""

    def __init__(self, config: AlertsConfig) -> None:
        self.config = config
        self.firing: dict[Key, Alert] = {}
        self.recent: deque[Alert] = deque(maxlen=RECENT)
        # (rule, backend) -> when its last `firing` was sent: at most rules x backends entries.
        self.last_sent: dict[tuple[str, str | None], float] = {}
        self._broken: set[str] = set()  # rules whose function raised (logged once)

    def configure(self, config: AlertsConfig, now: float) -> list[Notice]:
        """New settings (a reload): they apply at the next evaluation (a dropped rule's alerts
        resolve then); turned off, everything firing resolves now."""
        self.config = config
        if config.enabled:
            return []
        return [n for key in list(self.firing) if (n := self._resolve(key, now)) is not None]

    def holding(self, view: View) -> dict[Key, float]:
        found: dict[Key, float] = {}
        for rule in self.config.rules:
            judge = RULES.get(rule.name)
            if judge is None:
                continue
            try:
                for backend, value in judge(view, rule):
                    found[rule.name, rule.severity, backend] = value
            except Exception:  # a bug in one rule: the others are still judged
                if rule.name not in self._broken:
                    log.exception("alert rule %s failed; it is skipped until it works", rule.name)
                    self._broken.add(rule.name)
                for key, alert in self.firing.items():  # what it had firing stays so
                    if key[0] == rule.name:
                        found[key] = alert.value
                continue
            self._broken.discard(rule.name)
        return found

    def evaluate(self, view: View, now: float) -> list[Notice]:
        """One evaluation at `now` (epoch seconds): the notices to send."""
        if not self.config.enabled:
            return []
        holding = self.holding(view)
        notices = [
            n for key in list(self.firing) if key not in holding
            if (n := self._resolve(key, now)) is not None
        ]  # fmt: skip
        for key, value in holding.items():
            alert = self.firing.get(key)
            if alert is not None:
                alert.value = value
                continue
            rule, severity, backend = key
            self.firing[key] = alert = Alert(rule, severity, backend, value, now)
            log.warning(
                "alert firing: %s (%s)%s: value %s",
                rule, severity, _where(alert), _shown(rule, value),
            )  # fmt: skip
        notices.extend(self._due(now))
        self._prune(view, now)
        return notices

    def _resolve(self, key: Key, now: float) -> Notice | None:
        alert = self.firing.pop(key)
        alert.resolved = now
        self.recent.appendleft(alert)
        log.info(
            "alert resolved: %s (%s)%s after %.1fs",
            alert.rule, alert.severity, _where(alert), now - alert.since,
        )  # fmt: skip
        return alert.notice("resolved") if alert.notified else None

    def _due(self, now: float) -> Iterator[Notice]:
        """The `firing` notices due: alerts not notified yet, past their cooldown."""
        url = self.config.webhook
        if not url:
            return
        cooldown = self.config.cooldown
        for alert in self.firing.values():
            if alert.notified:
                continue
            last = self.last_sent.get((alert.rule, alert.backend))
            if last is not None and now - last < getattr(cooldown, alert.severity, 0.0):
                continue
            alert.notified = url
            self.last_sent[alert.rule, alert.backend] = now
            yield alert.notice("firing")

    def _prune(self, view: View, now: float) -> None:
        """Keep the cooldown table to the rules and backends there are, and to the entries
        that can still hold a firing back: at most rules x (backends + 1) entries."""
        cooldown = self.config.cooldown
        longest = max(cooldown.low, cooldown.medium, cooldown.high, cooldown.critical)
        rules = {rule.name for rule in self.config.rules}
        names = {backend.name for backend in view.backends}
        for (rule, backend), sent in list(self.last_sent.items()):
            gone = rule not in rules or (backend is not None and backend not in names)
            if gone or now - sent >= longest:
                del self.last_sent[rule, backend]

    def as_json(self) -> dict[str, Any]:
        """GET /alerts (SPEC §3)."""
        if not self.config.enabled:
            return dict(DISABLED)
        order = {rule.name: i for i, rule in enumerate(self.config.rules)}
        firing = sorted(self.firing.values(), key=lambda a: (a.since, order.get(a.rule, 0)))
        return {
            "firing": [alert.as_json() for alert in firing],
            "recent": [alert.as_json() for alert in self.recent],
            "enabled": True,
        }

    def family(self) -> Metric:
        """`balancer_alert_firing{rule,severity,backend}`: 1 for each alert firing now
        (backend "" for the whole balancer)."""
        family = GaugeMetricFamily(
            "balancer_alert_firing",
            "1 for each alert firing now (GET /alerts); backend empty for the whole balancer",
            labels=["rule", "severity", "backend"],
        )
        for alert in self.firing.values():
            family.add_metric([alert.rule, alert.severity, alert.backend or ""], 1.0)
        return family


class AlertsCollector(Collector):
    """The firing alerts in one process' /metrics, read at scrape time."""

    def __init__(self, alerts: Alerts) -> None:
        self.alerts = alerts

    def collect(self) -> Iterator[Metric]:
        yield self.alerts.family()


# --- the loop --------------------------------------------------------------------------------


class Notifier(Protocol):
    """What the service hands its notices to (alert_webhook.Webhook): `send` never waits."""

    def send(self, notice: Notice) -> None: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class AlertService:
    """Evaluates every `interval`: the settings read each time (`settings()`, the running
    config's), the view built by `view()` (None: nothing to judge now, e.g. no worker
    answered; the alerts stay as they are)."""

    def __init__(
        self,
        settings: Callable[[], AlertsConfig],
        view: Callable[[], Awaitable[View | None]],
        notifier: Notifier,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._view = view
        self.notifier = notifier
        self._clock = clock
        self.engine = Alerts(settings())
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        config = self._settings()
        if config != self.engine.config:
            for notice in self.engine.configure(config, self._clock()):
                self.notifier.send(notice)
        if not config.enabled:
            return
        try:
            view = await self._view()
        except Exception as exc:  # a view that cannot be built leaves the alerts as they are
            log.debug("could not read the balancer's state for the alerts: %r", exc)
            return
        if view is None:
            return
        for notice in self.engine.evaluate(view, self._clock()):
            self.notifier.send(notice)

    def start(self) -> None:
        async def run() -> None:
            failing = False
            while True:
                try:
                    await self.tick()
                    failing = False
                except Exception:  # a bug: logged once per run of them, evaluation goes on
                    if not failing:
                        log.exception("alerts: an evaluation failed; trying again")
                    failing = True
                await asyncio.sleep(self._settings().interval)

        self.notifier.start()
        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.notifier.stop()

    def as_json(self) -> dict[str, Any]:
        return self.engine.as_json()
