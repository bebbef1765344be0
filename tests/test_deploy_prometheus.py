"""deploy/prometheus and deploy/grafana: checked and unit-tested with the real promtool, and
the dashboards checked against the metric names that the rules and the collectors define."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from collectors.dcgm import DCGM_METRICS
from collectors.ipmi import GENERIC_SENSOR, SENSOR_METRICS
from collectors.rocm import ROCM_METRICS
from kiln.metrics import HttpMetrics
from tests.peers.harness import missing_peer

DEPLOY = Path(__file__).parent.parent / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_FILES = sorted(p for p in PROMETHEUS_DIR.glob("*rules*.yml") if not p.name.endswith("_test.yml"))
RULE_TESTS = sorted(PROMETHEUS_DIR.glob("*_test.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
IPMI_SOURCE = Path(__file__).parent.parent / "collectors" / "ipmi.py"

# Series Prometheus makes itself
PROMETHEUS_BUILTINS = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
    "inf", "nan", "atan2",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    """The real promtool (Debian's prometheus package, installed by tests/peers/prometheus.sh)."""
    path = shutil.which("promtool")
    if path is None:
        missing_peer("promtool", "not installed (run tests/peers/prometheus.sh install)")
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in deploy/prometheus (rule files are named relative to it)."""
    return subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)


def test_the_layout_of_the_scripting_contract() -> None:
    assert {p.name for p in RULE_FILES} == {"kiln-recording-rules.yml", "kiln-alert-rules.yml"}
    assert {p.name for p in RULE_TESTS} == {"recording_test.yml", "alerts_test.yml"}
    assert {p.name for p in DASHBOARDS} == {"fleet-health.json", "tenant-cost.json"}
    scrape = yaml.safe_load((PROMETHEUS_DIR / "kiln-scrape.yml").read_text())
    assert sorted(scrape["rule_files"]) == sorted(p.name for p in RULE_FILES)
    assert {job["job_name"] for job in scrape["scrape_configs"]} == {
        "kiln", "kiln-worker", "dcgm-exporter", "amd-device-metrics-exporter", "node-exporter"}


def test_promtool_check_config(promtool: str) -> None:
    result = run_promtool(promtool, "check", "config", "kiln-scrape.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", *(p.name for p in RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_test_rules(promtool: str, test_file: Path) -> None:
    result = run_promtool(promtool, "test", "rules", test_file.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_the_contract_names_is_unit_tested() -> None:
    alerts = {rule["alert"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    assert {"KilnBmcUnreachable", "KilnGpuXidError", "KilnNodeOverTemperature", "KilnCollectorStale",
            "KilnCollectorTargetDown", "KilnBudgetExceeded"} <= alerts
    tested = {case["alertname"] for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert alerts == tested


def test_a_broken_rule_fails_promtool(promtool: str, tmp_path: Path) -> None:
    """The checks can fail: promtool refuses a rule with a PromQL error."""
    bad = tmp_path / "bad-rules.yml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"alert": "Broken", "expr": "sum by (node (ipmi_up)"}]}]}))
    result = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "parse error" in result.stdout + result.stderr


# --- Grafana dashboards --------------------------------------------------------------------


def rules() -> list[dict]:
    """Every rule of the rule files."""
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (Grafana variables replaced, functions and keywords left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                     # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                                  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)                                 # ranges
    expr = re.sub(r"\$\w+", "", expr)                                      # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def defined_metric_names() -> set[str]:
    """Names the rules record or read (the contract) and the collectors and Kiln export."""
    names = {rule["record"] for rule in rules() if "record" in rule}
    names |= {name for rule in rules() for name in metric_names(rule["expr"])}
    names |= {m.exporter for m in DCGM_METRICS + ROCM_METRICS}
    names |= {n for spec in [*SENSOR_METRICS.values(), GENERIC_SENSOR] for n in (spec.value, spec.state)}
    names |= set(re.findall(r'"(ipmi_[a-z_]+)"', IPMI_SOURCE.read_text()))
    registry = CollectorRegistry()
    HttpMetrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",), "gauge": ("",)}
    names |= {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}
    return names | PROMETHEUS_BUILTINS


def panel_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows included."""
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", []) if t.get("expr")]


def test_metric_name_extraction() -> None:
    assert metric_names('sum by (tenant) (a:b:c{x="y"} * on (namespace) group_left (tenant) '
                        'max by (namespace, tenant) (kiln_namespace_tenant_info)) or vector(0)') == {
        "a:b:c", "kiln_namespace_tenant_info"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))") == {"x_bucket"}
    assert metric_names('sum(sum_over_time(y{tenant=~"$tenant"}[$__range:1m])) / 60') == {"y"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_importable(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["__inputs"] == [{**dashboard["__inputs"][0], "name": "DS_PROMETHEUS", "type": "datasource",
                                      "pluginId": "prometheus"}]
    assert dashboard["id"] is None and dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panel_ids = [p["id"] for p in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboards_have_unique_uids_and_titles() -> None:
    dashboards = [json.loads(p.read_text()) for p in DASHBOARDS]
    assert len({d["uid"] for d in dashboards}) == len(dashboards)
    assert len({d["title"] for d in dashboards}) == len(dashboards)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_use_only_defined_metrics(path: Path) -> None:
    known = defined_metric_names()
    unknown = {(title, name) for title, expr in panel_exprs(json.loads(path.read_text()))
               for name in metric_names(expr) if name not in known}
    assert unknown == set()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_parse(promtool: str, path: Path, tmp_path: Path) -> None:
    """Each panel query (Grafana variables filled in) is valid PromQL: promtool checks it as a rule."""
    exprs = panel_exprs(json.loads(path.read_text()))
    assert exprs
    filled = [expr.replace("$__range", "1h").replace("$tenant", ".*") for _, expr in exprs]
    check = tmp_path / "panels-rules.yml"
    check.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": [
        {"record": f"panel:query{i}:check", "expr": expr} for i, expr in enumerate(filled)]}]}))
    result = subprocess.run([promtool, "check", "rules", str(check)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
