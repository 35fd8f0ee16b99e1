"""alerts.py as pure objects with a fake clock: each rule over a View, and the engine's fire /
resolve / cooldown semantics (SPEC §6), its bounds, its reload, and the webhook's queue."""

from __future__ import annotations

import bisect
import dataclasses
import logging
import random
from collections.abc import Mapping
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from balancer import config_checks, window
from balancer.alert_webhook import Webhook
from balancer.alerts import (
    RECENT,
    RULES,
    Alerts,
    AlertsCollector,
    AlertService,
    BackendView,
    Notice,
    View,
    view_of,
)
from balancer.backend import DURATION_BUCKETS
from balancer.config import ALERT_RULES, AlertRuleConfig, AlertsConfig, CooldownConfig
from balancer.window import Figures

from support import eventually

HOOK = "http://127.0.0.1:9/hook"


def rule(name: str, **changes: Any) -> AlertRuleConfig:
    [default] = [r for r in ALERT_RULES if r.name == name]
    return dataclasses.replace(default, **changes)


def backend(
    name: str, health: str = "healthy", breaker: str = "closed", routable: bool = True
) -> BackendView:
    return BackendView(name, health, breaker, routable)


def traffic(requests: int, errors: int = 0, seconds: float = 0.0) -> Figures:
    """`requests` answers, `errors` of them 5xx, each taking `seconds` (0: the first bucket)."""
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] = requests
    return Figures(60.0, requests, errors, tuple(buckets))


def view(
    *backends: BackendView, store: bool = True, figures: Mapping[str, Figures] | None = None
) -> View:
    asked: list[float] = []

    def over(seconds: float) -> Mapping[str, Figures]:
        asked.append(seconds)
        return figures or {}

    return View(tuple(backends), store, over)


def holds(name: str, v: View, **changes: Any) -> list[tuple[str | None, float]]:
    return list(RULES[name](v, rule(name, **changes)))


# --- the rules, one by one -------------------------------------------------------------------


def test_every_rule_of_the_spec_has_its_function_and_its_defaults() -> None:
    assert list(RULES) == [r.name for r in ALERT_RULES]
    assert ALERT_RULES == (
        AlertRuleConfig("backend_down", "critical"),
        AlertRuleConfig("no_backend", "critical"),
        AlertRuleConfig("breaker_open", "high"),
        AlertRuleConfig("error_ratio", "high", 0.05, 60.0),
        AlertRuleConfig("latency_p95", "medium", 1.0, 60.0),
        AlertRuleConfig("latency_p99", "medium", 2.0, 60.0),
        AlertRuleConfig("store_down", "medium"),
    )
    assert CooldownConfig() == CooldownConfig(300.0, 180.0, 60.0, 30.0)


def test_the_window_limits_of_the_config_are_the_samplers() -> None:
    assert config_checks.ALERT_WINDOW_MIN == window.INTERVAL
    assert config_checks.ALERT_WINDOW_MAX == window.HISTORY


def test_backend_down_per_backend_whatever_its_mode() -> None:
    v = view(backend("a"), backend("b", health="unhealthy", routable=False))
    assert holds("backend_down", v) == [("b", 0.0)]
    assert holds("backend_down", view(backend("a"))) == []


def test_no_backend_is_balancer_wide() -> None:
    assert holds(
        "no_backend", view(backend("a", routable=False), backend("b", routable=False))
    ) == [(None, 0.0)]
    assert holds("no_backend", view(backend("a", routable=False), backend("b"))) == []
    assert holds("no_backend", view()) == [(None, 0.0)]


def test_breaker_open_holds_until_the_breaker_closes() -> None:
    v = view(backend("a", breaker="open"), backend("b", breaker="half_open"), backend("c"))
    assert holds("breaker_open", v) == [("a", 2.0), ("b", 1.0)]


def test_error_ratio_needs_no_minimum_of_requests() -> None:
    figures = {"a": traffic(1, 1), "b": traffic(100, 5), "c": traffic(0), "d": traffic(100, 6)}
    v = view(backend("a"), backend("b"), backend("c"), backend("d"), figures=figures)
    assert holds("error_ratio", v) == [("a", 1.0), ("d", 0.06)]  # above, not at: b's 0.05 no
    assert holds("error_ratio", v, above=0.0) == [("a", 1.0), ("b", 0.05), ("d", 0.06)]


def test_error_ratio_and_latency_judge_the_backends_not_the_whole_or_none() -> None:
    figures = {"*": traffic(10, 10, 5.0), "none": traffic(10, 10, 5.0), "a": traffic(10)}
    v = view(backend("a"), figures=figures)
    for name in ("error_ratio", "latency_p95", "latency_p99"):
        assert holds(name, v) == []


def test_error_ratio_reads_its_own_window() -> None:
    asked: list[float] = []

    def over(seconds: float) -> Mapping[str, Figures]:
        asked.append(seconds)
        return {}

    RULES["error_ratio"](View((backend("a"),), True, over), rule("error_ratio", over=30.0))
    assert asked == [30.0]


@pytest.mark.parametrize(
    ("answers", "p95", "p99"),
    [
        ([(100, 0.5)], False, False),
        ([(90, 0.01), (10, 1.5)], True, True),  # p95 1.75 s, p99 2.35 s
        ([(96, 0.01), (4, 3.0)], False, True),  # p95 in the fast bucket, p99 4.4 s
    ],
)
def test_latency_rules(answers: list[tuple[int, float]], p95: bool, p99: bool) -> None:
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    for count, seconds in answers:
        buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += count
    figures = {"a": Figures(60.0, sum(c for c, _ in answers), 0, tuple(buckets))}
    v = view(backend("a"), backend("idle"), figures=figures)
    for name, fires in (("latency_p95", p95), ("latency_p99", p99)):
        found = holds(name, v)
        assert [b for b, _ in found] == (["a"] if fires else []), name
        for _, value in found:
            assert value > rule(name).above  # type: ignore[operator]


def test_store_down_is_balancer_wide() -> None:
    assert holds("store_down", view(backend("a"), store=False)) == [(None, 0.0)]
    assert holds("store_down", view(backend("a"))) == []


def test_view_of_a_status_keeps_the_running_configs_backends() -> None:
    status = {
        "sticky": {"mode": "off", "store": "redis", "available": False},
        "backends": [
            {"name": "a", "health": "unhealthy", "breaker": "open", "routable": False},
            {"name": "retiring", "health": "unhealthy", "breaker": "closed", "routable": False},
        ],
    }
    v = view_of(status, lambda seconds: {}, {"a"})
    assert v.backends == (BackendView("a", "unhealthy", "open", False),)
    assert v.store_available is False


# --- the engine ------------------------------------------------------------------------------


def engine(**changes: Any) -> Alerts:
    return Alerts(dataclasses.replace(AlertsConfig(webhook=HOOK), **changes))


DOWN = view(backend("a", health="unhealthy"), backend("b"))
UP = view(backend("a"), backend("b"))


def statuses(notices: list[Notice]) -> list[tuple[str, str, str | None]]:
    return [(n.body["status"], n.body["rule"], n.body["backend"]) for n in notices]


def test_an_alert_fires_once_and_resolves_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "balancer.alerts")
    alerts = engine()
    assert alerts.evaluate(UP, 100.0) == []
    [fired] = alerts.evaluate(DOWN, 110.0)
    assert fired == Notice(
        HOOK,
        {
            "status": "firing",
            "rule": "backend_down",
            "severity": "critical",
            "backend": "a",
            "value": 0.0,
            "since": 110.0,
        },
    )
    for now in range(111, 200):  # no reminders while it keeps firing
        assert alerts.evaluate(DOWN, float(now)) == []
    assert alerts.as_json()["firing"] == [
        {
            "rule": "backend_down",
            "severity": "critical",
            "backend": "a",
            "value": 0.0,
            "since": 110.0,
        }
    ]
    [resolved] = alerts.evaluate(UP, 200.0)
    assert resolved.body == {**fired.body, "status": "resolved"}
    assert alerts.evaluate(UP, 201.0) == []
    answer = alerts.as_json()
    assert answer["firing"] == [] and answer["enabled"] is True
    alert = {k: v for k, v in fired.body.items() if k != "status"}
    assert answer["recent"] == [{**alert, "resolved": 200.0}]
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        ("WARNING", "alert firing: backend_down (critical) on a: value 0"),
        ("INFO", "alert resolved: backend_down (critical) on a after 90.0s"),
    ]


def test_the_value_follows_while_it_fires_and_the_resolved_carries_the_last() -> None:
    alerts = engine()
    fig = {"a": traffic(10, 2)}
    alerts.evaluate(view(backend("a"), figures=fig), 0.0)
    alerts.evaluate(view(backend("a"), figures={"a": traffic(10, 4)}), 10.0)
    assert alerts.as_json()["firing"][0]["value"] == 0.4
    [resolved] = alerts.evaluate(view(backend("a")), 20.0)
    assert resolved.body["value"] == 0.4 and resolved.body["since"] == 0.0


def test_cooldown_holds_a_new_firing_back_until_it_has_passed() -> None:
    alerts = engine()  # critical: 30 s
    assert statuses(alerts.evaluate(DOWN, 0.0)) == [("firing", "backend_down", "a")]
    assert statuses(alerts.evaluate(UP, 5.0)) == [("resolved", "backend_down", "a")]
    assert alerts.evaluate(DOWN, 10.0) == []  # within 30 s of the last firing sent: held
    assert alerts.evaluate(UP, 20.0) == []  # never sent, so no resolved either
    assert alerts.evaluate(DOWN, 25.0) == []
    [late] = alerts.evaluate(DOWN, 30.0)  # the cooldown passed, it still fires: sent now
    assert late.body["status"] == "firing" and late.body["since"] == 25.0
    assert statuses(alerts.evaluate(UP, 31.0)) == [("resolved", "backend_down", "a")]
    # Logged and shown at every change all the same.
    assert [a["since"] for a in alerts.as_json()["recent"]] == [25.0, 10.0, 0.0]


def test_cooldown_is_per_rule_and_backend_and_by_severity() -> None:
    cooldown = CooldownConfig(low=0.0, medium=0.0, high=100.0, critical=0.0)
    alerts = engine(cooldown=cooldown)
    both = view(backend("a", breaker="open", health="unhealthy"), backend("b", breaker="open"))
    sent = statuses(alerts.evaluate(both, 0.0))
    assert sorted(sent) == [
        ("firing", "backend_down", "a"),
        ("firing", "breaker_open", "a"),
        ("firing", "breaker_open", "b"),
    ]
    alerts.evaluate(UP, 1.0)
    again = statuses(alerts.evaluate(both, 2.0))  # critical: 0 s, high: 100 s
    assert again == [("firing", "backend_down", "a")]
    assert alerts.evaluate(both, 99.0) == []
    assert sorted(statuses(alerts.evaluate(both, 100.0))) == [
        ("firing", "breaker_open", "a"),
        ("firing", "breaker_open", "b"),
    ]


def test_without_a_webhook_nothing_is_sent_and_a_new_webhook_gets_what_fires() -> None:
    alerts = engine(webhook="")
    assert alerts.evaluate(DOWN, 0.0) == []
    assert alerts.as_json()["firing"][0]["rule"] == "backend_down"
    alerts.configure(dataclasses.replace(alerts.config, webhook=HOOK), 1.0)
    assert statuses(alerts.evaluate(DOWN, 2.0)) == [("firing", "backend_down", "a")]


def test_every_firing_sent_gets_its_resolved_where_it_went() -> None:
    alerts = engine()
    [fired] = alerts.evaluate(DOWN, 0.0)
    alerts.configure(dataclasses.replace(alerts.config, webhook=""), 1.0)
    [resolved] = alerts.evaluate(UP, 2.0)
    assert resolved.url == fired.url == HOOK and resolved.body["status"] == "resolved"
    alerts.configure(dataclasses.replace(alerts.config, webhook="http://other/"), 3.0)
    [fired] = alerts.evaluate(DOWN, 100.0)
    alerts.configure(dataclasses.replace(alerts.config, webhook=HOOK), 101.0)
    [resolved] = alerts.evaluate(UP, 102.0)
    assert resolved.url == "http://other/"


def test_a_dropped_rule_resolves_at_the_next_evaluation() -> None:
    alerts = engine()
    alerts.evaluate(DOWN, 0.0)
    rules = tuple(r for r in ALERT_RULES if r.name != "backend_down")
    assert alerts.configure(dataclasses.replace(alerts.config, rules=rules), 1.0) == []
    assert statuses(alerts.evaluate(DOWN, 2.0)) == [("resolved", "backend_down", "a")]
    assert alerts.evaluate(DOWN, 3.0) == [] and alerts.firing == {}


def test_a_new_threshold_applies_at_the_next_evaluation() -> None:
    alerts = engine()
    v = view(backend("a"), figures={"a": traffic(100, 10)})
    assert statuses(alerts.evaluate(v, 0.0)) == [("firing", "error_ratio", "a")]
    rules = tuple(
        rule("error_ratio", above=0.2) if r.name == "error_ratio" else r for r in ALERT_RULES
    )
    alerts.configure(dataclasses.replace(alerts.config, rules=rules), 1.0)
    assert statuses(alerts.evaluate(v, 2.0)) == [("resolved", "error_ratio", "a")]


def test_a_new_severity_is_another_alert() -> None:
    alerts = engine(cooldown=CooldownConfig(0.0, 0.0, 0.0, 0.0))
    alerts.evaluate(DOWN, 0.0)
    rules = tuple(
        rule("backend_down", severity="low") if r.name == "backend_down" else r for r in ALERT_RULES
    )
    alerts.configure(dataclasses.replace(alerts.config, rules=rules), 1.0)
    sent = [(n.body["status"], n.body["severity"]) for n in alerts.evaluate(DOWN, 2.0)]
    assert sent == [("resolved", "critical"), ("firing", "low")]


def test_turned_off_everything_resolves_at_once_and_nothing_is_judged() -> None:
    alerts = engine()
    alerts.evaluate(DOWN, 0.0)
    off = dataclasses.replace(alerts.config, enabled=False)
    assert statuses(alerts.configure(off, 1.0)) == [("resolved", "backend_down", "a")]
    assert alerts.evaluate(DOWN, 2.0) == []
    assert alerts.as_json() == {"firing": [], "recent": [], "enabled": False}


def test_a_rule_that_raises_is_logged_once_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(view: View, rule: AlertRuleConfig) -> list[tuple[str | None, float]]:
        raise RuntimeError("bug")

    monkeypatch.setitem(RULES, "breaker_open", broken)
    alerts = engine()
    for now in range(5):
        alerts.evaluate(DOWN, float(now))
    assert [a["rule"] for a in alerts.as_json()["firing"]] == ["backend_down"]
    assert (
        len([r for r in caplog.records if "alert rule breaker_open failed" in r.getMessage()]) == 1
    )


def test_many_backends_flapping_stay_bounded() -> None:
    """Backends that come and go under new names and flap at every evaluation: the firing
    set, the recent list and the cooldown table stay within rules x backends."""
    alerts = engine(cooldown=CooldownConfig(5.0, 5.0, 5.0, 5.0))
    chance = random.Random(7)
    for now in range(3000):
        names = [f"b{now // 100}-{i}" for i in range(20)]  # a new set every 100 evaluations
        backends = [
            backend(
                name,
                health=chance.choice(["healthy", "unhealthy"]),
                breaker=chance.choice(["closed", "open"]),
            )
            for name in names
        ]
        figures = {
            name: traffic(10, chance.randrange(10), chance.choice([0.001, 3.0])) for name in names
        }
        alerts.evaluate(view(*backends, store=chance.random() < 0.5, figures=figures), float(now))
        assert len(alerts.firing) <= len(ALERT_RULES) * (len(names) + 1)
        assert len(alerts.last_sent) <= len(ALERT_RULES) * (len(names) + 1)
        assert len(alerts.recent) <= RECENT
    assert len(alerts.as_json()["recent"]) == RECENT


def test_the_metric_family_names_each_firing_alert() -> None:
    alerts = engine()
    alerts.evaluate(view(backend("a", health="unhealthy"), store=False), 0.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AlertsCollector(alerts))
    text = generate_latest(registry).decode()
    assert 'balancer_alert_firing{backend="a",rule="backend_down",severity="critical"} 1.0' in text
    assert 'balancer_alert_firing{backend="",rule="store_down",severity="medium"} 1.0' in text


# --- the service's loop, with a fake view and notifier ---------------------------------------


class Notices:
    def __init__(self) -> None:
        self.sent: list[Notice] = []

    def send(self, notice: Notice) -> None:
        self.sent.append(notice)

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


async def test_the_service_reads_the_settings_at_each_evaluation() -> None:
    settings = [AlertsConfig(webhook=HOOK)]
    views: list[View | None] = [DOWN]

    async def current() -> View | None:
        return views[-1]

    notices = Notices()
    clock = iter(range(100))
    service = AlertService(lambda: settings[-1], current, notices, clock=lambda: float(next(clock)))
    await service.tick()
    assert statuses(notices.sent) == [("firing", "backend_down", "a")]
    views.append(None)  # nothing to judge (no worker answered): it keeps firing
    await service.tick()
    assert len(service.as_json()["firing"]) == 1
    settings.append(dataclasses.replace(settings[0], enabled=False))
    await service.tick()
    assert statuses(notices.sent)[-1] == ("resolved", "backend_down", "a")
    assert service.as_json() == {"firing": [], "recent": [], "enabled": False}


# --- the webhook's queue ---------------------------------------------------------------------


async def test_a_full_queue_drops_new_notices_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = Webhook(queue=3)
    for i in range(10):
        hook.send(Notice(HOOK, {"status": "firing", "rule": f"r{i}"}))
    assert hook.queue.qsize() == 3 and hook.dropped == 7
    assert len([r for r in caplog.records if "dropping new ones" in r.getMessage()]) == 1
    hook.send(Notice("", {"status": "firing"}))  # no URL: nothing to send
    assert hook.dropped == 7
    assert "/hook" not in caplog.text


async def test_a_webhook_that_cannot_be_reached_fails_once_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = Webhook(timeout=2.0)
    hook.start()
    try:
        for i in range(3):
            hook.send(
                Notice("http://127.0.0.1:9/secret-path", {"status": "firing", "rule": f"r{i}"})
            )
        await eventually(lambda: hook.failed == 3, timeout=10)
    finally:
        await hook.stop()
    warned = [r.getMessage() for r in caplog.records if r.name == "balancer.alerts"]
    assert len(warned) == 1 and "cannot connect" in warned[0]
    assert "secret-path" not in caplog.text


async def test_what_is_queued_goes_before_the_webhook_stops() -> None:
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        hook_ = Webhook()
        hook_.start()
        for status in ("firing", "resolved"):
            hook_.send(Notice(url, {"status": status, "rule": "backend_down"}))
        await hook_.stop()
        assert [body["status"] for body in received] == ["firing", "resolved"]
        assert (hook_.sent, hook_.pending) == (2, 0)
    finally:
        await runner.cleanup()
