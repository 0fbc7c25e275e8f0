"""SLOs as code: the rule files pass promtool, every alert has firing and quiet unit tests, and the rules and
the dashboard name only metrics that exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from comfyflow import metrics as m
from comfyflow.testing.prometheus import binary

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "comfyflow-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "comfyflow.json"
UNIT_TESTS = sorted((PROM / "tests").glob("*.yml"))
NAME = re.compile(r"\b(comfyflow(?::[a-z0-9_]+)+|comfyflow_[a-z0-9_]+)\b")


def _promtool(*args: str) -> str:
    res = subprocess.run([binary("promtool"), *args], capture_output=True, text=True, cwd=PROM, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard, rows' panels included."""
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            out.extend((p["title"], t["expr"]) for t in p.get("targets", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return out


def known_series() -> set[str]:
    names = {r["record"] for r in _rules() if "record" in r}
    for spec in m.ALL:
        if spec.kind == "histogram":
            names |= {f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
        else:
            names.add(spec.name)
    return names


def test_promtool_checks_the_rules() -> None:
    out = _promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_promtool_unit_tests_pass() -> None:
    assert len(UNIT_TESTS) >= 4
    out = _promtool("test", "rules", *[str(p) for p in UNIT_TESTS])
    assert out.count("SUCCESS") == len(UNIT_TESTS) and "FAILED" not in out


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (fired if t.get("exp_alerts") else quiet).add(t["alertname"])
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert len(alerts) >= 6
    assert alerts <= fired, f"alerts never tested firing: {alerts - fired}"
    assert alerts <= quiet, f"alerts never tested quiet: {alerts - quiet}"


def test_rules_and_dashboard_name_only_metrics_that_exist() -> None:
    known = known_series()
    exprs = [r["expr"] for r in _rules()] + [expr for _, expr in dashboard_queries()]
    used = {name for expr in exprs for name in NAME.findall(expr)}
    assert used and used <= known, f"unknown metrics: {used - known}"
    for spec in m.ALL:  # and the dashboard shows every metric there is
        stem = spec.name
        assert any(stem in expr for expr in exprs), f"{spec.name} is on no panel and in no rule"
    assert len(dashboard_queries()) >= 20


def test_user_errors_in_the_rules_are_the_ones_the_code_knows() -> None:
    expr = next(r["expr"] for r in _rules() if r.get("record") == "comfyflow:job_failures:ratio_30m")
    regexes = set(re.findall(r'error_class!~"([^"]+)"', expr))
    assert regexes == {"|".join(m.USER_ERROR_CLASSES)}


def test_metric_names_follow_the_convention() -> None:
    for spec in m.ALL:
        assert re.fullmatch(r"comfyflow_[a-z_]+", spec.name)
        if spec.kind == "counter":
            assert spec.name.endswith("_total")
        if "duration" in spec.name or spec.name.endswith("seconds"):
            assert spec.name.endswith(("_seconds", "_seconds_total"))
        assert len(spec.labels) <= 3, f"{spec.name}: few labels"
