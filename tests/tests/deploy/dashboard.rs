//! The Grafana dashboard queries the series the agent exports.

use super::*;

#[test]
fn grafana_dashboard_queries_the_exported_series() {
    let path = deploy_dir().join("grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let variables = array_of(&dashboard["templating"]["list"], "templating.list");
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "no data source variable DS_PROMETHEUS"
    );
    let mut exprs = Vec::new();
    for panel in array_of(&dashboard["panels"], "panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = &panel["title"];
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title}: data source"
        );
        for target in array_of(&panel["targets"], "targets") {
            assert_eq!(
                target["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {title}: a query's data source"
            );
            exprs.push(str_of(&target["expr"], "expr").to_string());
        }
    }
    for series in DASHBOARD_SERIES {
        assert!(
            exprs.iter().any(|e| e.contains(series)),
            "no panel charts {series}"
        );
    }

    // Valid PromQL: promtool (Debian's prometheus package, installed by `cargo xtask setup`)
    // checks them as recording rules. Grafana's own variable is replaced by a duration; the
    // dashboard's variables only appear inside label matchers' strings.
    let dir = tempfile::tempdir().expect("tempdir");
    let rules_file = dir.path().join("dashboard-rules.yaml");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = Value::String(expr.replace("$__rate_interval", "5m"));
        rules.push_str(&format!(
            "      - record: panel_query_{i}\n        expr: {expr}\n"
        ));
    }
    fs::write(&rules_file, &rules).expect("write rules");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool: {e}; run `cargo xtask setup` (Debian's prometheus)")
        });
    assert!(
        out.status.success(),
        "promtool rejects the dashboard's queries:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
