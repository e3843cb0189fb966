"""The metrics reference (docs/operations.md), the Prometheus alert rules and the Grafana dashboard name exactly the
metrics the service exports: read from the registry of an app built by service.app.create_app (the gRPC metrics
join the same registry when the gRPC servers start; GrpcMetrics.of_app adds them here without starting them)."""

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
OPERATIONS = REPO / "docs" / "operations.md"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"
NAME = re.compile(r"\bvae_[a-z0-9_]*[a-z0-9]\b")


@pytest.fixture(scope="module")
def families() -> dict[str, str]:
    """Metric family name (as the docs name it: counters with `_total`) -> type."""
    from service.api.grpc.server import GrpcMetrics
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings())
    GrpcMetrics.of_app(app.state.metrics)
    found = {}
    for family in app.state.metrics.registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = family.type
    assert found, "the app's registry holds no metric"
    return found


def _series(families: dict[str, str]) -> set[str]:
    """Every series name a query may use: histograms' _bucket, _sum and _count as well."""
    names = set()
    for name, kind in families.items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_the_reference_lists_every_metric(families):
    text = OPERATIONS.read_text()
    for name in families:
        assert f"`{name}`" in text, f"{name} is exported but missing from docs/operations.md"


def test_the_docs_name_no_metric_the_service_does_not_export(families):
    series = _series(families)
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "MODEL_CARD.md"]:
        for name in set(NAME.findall(doc.read_text())):
            assert name in series, f"{doc.name} names {name}, which the service does not export"


def test_alert_rules_use_exported_metrics_only(families):
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert rules and all({"alert", "expr"} <= set(rule) for rule in rules)
    series = _series(families)
    used = {name for rule in rules for name in NAME.findall(rule["expr"])}
    assert used, "the alert rules name no vae_ metric"
    assert used <= series, f"alert rules use metrics the service does not export: {sorted(used - series)}"


def test_dashboard_uses_exported_metrics_only(families):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    series = _series(families)
    used = {name for expr in exprs for name in NAME.findall(expr)}
    assert used <= series, f"the dashboard uses metrics the service does not export: {sorted(used - series)}"
    # every exported metric has a panel
    assert {name for name in families} <= {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                                          for n in used} | {n for n in used}
