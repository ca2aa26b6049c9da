//! The metrics the deployment files name exist: a real `locator` process and a real
//! `edge` process are started, made to count every kind of thing (a link, answers in and
//! outside the client's region, a selection, readiness, region states), and their
//! `/metrics` are scraped; every `locator_*` and `edge_*` series named by the alert rules
//! (deploy/prometheus/locus-alerts.yml), their unit tests and the Grafana dashboard
//! (deploy/grafana/locus-dashboard.json) must be among the scraped samples. A renamed or
//! removed metric fails here instead of leaving an alert that can never fire. Then the
//! edge is stopped as an upgrade stops it (SIGTERM), and must count as retired, not
//! failed.
//!
//! The other deploy checks (systemd-analyze, kubernetes-validate, promtool) run in
//! scripts/check-deploy.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use support::{LocatorProcess, eventually, get_text, http, regions_yaml, spawn_edge, write_geoip};

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every `locator_…` / `edge_…` identifier in a text (PromQL, YAML, JSON alike).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let word = &text[start..i];
            if word.starts_with("locator_") || word.starts_with("edge_") {
                names.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The sample names of a text exposition (`name{labels} value` or `name value`).
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn metric_names_are_found_in_identifiers_only() {
    let names = metric_names(
        "sum(rate(locator_answers_total[5m])) / edge_spool_entries{edge=\"a\"} and up; xlocator_y",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["edge_spool_entries", "locator_answers_total"]
    );
    assert_eq!(
        sample_names("# TYPE a counter\na_total{x=\"1\"} 2\nb 3\n"),
        BTreeSet::from(["a_total".to_string(), "b".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    let dir = tempfile::tempdir().expect("dir");
    let geoip = write_geoip(dir.path());
    let config = dir.path().join("regions.yaml");
    std::fs::write(&config, regions_yaml(&geoip, "30s")).expect("write config");
    let log = std::fs::File::create(dir.path().join("locator.log")).expect("log");
    let locator = LocatorProcess::spawn(
        &config,
        dir.path(),
        &[("LOCUS_TEST_TURN_SECRET", "turn-secret-for-tests")],
        log,
    );
    let base = format!("http://{}", locator.addr);
    eventually("the locator is ready", || async {
        get_text(&format!("{base}/readyz")).await.0 == 200
    })
    .await;
    let edge = spawn_edge(
        &[locator.addr],
        "eu-west-1",
        "eu-west",
        &dir.path().join("spool"),
    );
    eventually("the edge is active on the locator", || async {
        get_text(&format!("{base}/metrics"))
            .await
            .1
            .contains("locator_edges{state=\"active\"} 1")
    })
    .await;
    // Answers in the client's region (GB -> eu-west) and outside it (JP: ap-northeast
    // has no edge, so a fallback), each through a selection.
    for ip in ["81.2.69.142", "133.1.2.3"] {
        let response = http()
            .get(format!("{base}/v1/locate"))
            .header("X-Forwarded-For", ip)
            .send()
            .await
            .expect("locate");
        assert_eq!(response.status(), 200, "locate for {ip}");
    }

    // The TURN pools' first checks (of servers that do not exist) end within
    // turn.check_timeout; their series appear then.
    eventually("the TURN servers' first checks", || async {
        get_text(&format!("{base}/metrics"))
            .await
            .1
            .contains("locator_turn_server_up{")
    })
    .await;
    let (status, locator_metrics) = get_text(&format!("{base}/metrics")).await;
    assert_eq!(status, 200, "{locator_metrics}");
    let (status, edge_metrics) = get_text(&format!("{}/metrics", edge.url)).await;
    assert_eq!(status, 200, "{edge_metrics}");
    let exported: BTreeSet<String> = sample_names(&locator_metrics)
        .union(&sample_names(&edge_metrics))
        .cloned()
        .collect();

    let mut named = BTreeSet::new();
    for file in [
        "deploy/prometheus/locus-alerts.yml",
        "deploy/prometheus/locus-alerts.test.yml",
        "deploy/grafana/locus-dashboard.json",
    ] {
        let names = metric_names(&repo_file(file));
        assert!(!names.is_empty(), "{file} names no metric");
        for name in names {
            named.insert((name, file));
        }
    }
    let missing: Vec<String> = named
        .iter()
        .filter(|(name, _)| !exported.contains(name))
        .map(|(name, file)| format!("{name} (named in {file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "not exported by a running locator or edge: {missing:?}\nexported: {exported:?}"
    );

    // The alerts' key series carry the values they are written against.
    assert!(
        locator_metrics.contains("locator_ready 1"),
        "{locator_metrics}"
    );
    assert!(
        locator_metrics.contains("locator_region_state{region=\"eu-west\",state=\"healthy\"} 1"),
        "{locator_metrics}"
    );
    assert!(
        locator_metrics
            .contains("locator_region_state{region=\"ap-northeast\",state=\"fallback\"} 1"),
        "{locator_metrics}"
    );
    assert!(
        edge_metrics.contains("edge_locator_connected{edge=\"eu-west-1\",region=\"eu-west\"} 1"),
        "{edge_metrics}"
    );

    // The runbook's upgrade step: an idle edge stopped with SIGTERM (`systemctl stop`, a
    // pod deletion) drains at once and exits. It must count as retired, not failed, or
    // LocusEdgeFailed would fire on every upgrade.
    let mut edge = edge;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &edge.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while edge.child.try_wait().expect("try_wait").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge did not exit after its drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("the locator counts the drained edge as retired", || async {
        get_text(&format!("{base}/metrics"))
            .await
            .1
            .contains("locator_edges{state=\"retired\"} 1")
    })
    .await;
    let (_, after) = get_text(&format!("{base}/metrics")).await;
    assert!(
        after.contains("locator_edges{state=\"failed\"} 0"),
        "{after}"
    );
}
