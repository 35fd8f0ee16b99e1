"""deploy/prometheus-alerts.yml (SPEC §6: the same rules as a Prometheus rules file): valid
for promtool, its unit tests pass over made-up series (tests/prometheus/alerts_test.yml), and
its rules, severities and thresholds are the balancer's defaults."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from balancer.config import ALERT_RULES

ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = ROOT / "deploy" / "prometheus-alerts.yml"
RULES_TEST = ROOT / "tests" / "prometheus" / "alerts_test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does)")
    return found


def test_promtool_checks_the_rules_file() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(RULES_FILE)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERT_RULES)} rules found" in checked.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    checked = subprocess.run(
        [promtool(), "test", "rules", RULES_TEST.name],
        capture_output=True,
        text=True,
        cwd=RULES_TEST.parent,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_the_rules_are_the_balancers_with_its_defaults() -> None:
    [group] = yaml.safe_load(RULES_FILE.read_text())["groups"]
    assert group["interval"] == "10s"  # alerts.interval's default
    rules = {rule["labels"]["rule"]: rule for rule in group["rules"]}
    assert list(rules) == [rule.name for rule in ALERT_RULES]
    for default in ALERT_RULES:
        rule = rules[default.name]
        assert rule["labels"]["severity"] == default.severity
        expr = " ".join(rule["expr"].split())
        if default.above is not None:
            assert expr.endswith(f"> {default.above:g}"), expr
            assert "[1m]" in expr and default.over == 60.0
    assert re.search(r"histogram_quantile\(0\.95,", " ".join(rules["latency_p95"]["expr"].split()))
    assert re.search(r"histogram_quantile\(0\.99,", " ".join(rules["latency_p99"]["expr"].split()))
