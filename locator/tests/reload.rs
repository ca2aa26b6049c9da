//! A config reload never breaks an answer: a real `locator` process answers creates,
//! joins and explains from many clients while `regions.yaml` is swapped under it by
//! SIGHUP, between three configs that reorder, add and remove regions.
//!
//! Every region id and every edge id carries the letter of its config (`a-eu`,
//! `edge-b-ap`), and each config sends the test addresses to its own regions only. So an
//! answer computed from two configs at once (a region index of one read in the region
//! table of another) shows up as two letters in one answer. The test asserts: no 5xx, no
//! answer mixing letters, and no panic in the process's log.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use support::{
    ADMIN_TOKEN, LocatorProcess, TestEdge, eventually, get_text, http, register, write_geoip,
};

/// How long clients and reloads run together.
const HAMMER: Duration = Duration::from_secs(4);

/// One address per country the configs route (GB, US, JP, DE in `write_geoip`).
const CLIENTS: [&str; 4] = ["81.2.69.142", "8.8.8.8", "133.1.2.3", "85.214.1.1"];

/// The configs, by letter: `(region id suffix, countries)` in file order, and the
/// default region. B drops `us` and reverses the order; C adds `de` first.
/// `(letter, (region id suffix, countries) in file order, default region suffix)`.
type TestConfig = (char, &'static [(&'static str, &'static str)], &'static str);

const CONFIGS: [TestConfig; 3] = [
    ('a', &[("us", "[US]"), ("eu", "[GB]"), ("ap", "[JP]")], "us"),
    ('b', &[("ap", "[JP]"), ("eu", "[GB]")], "eu"),
    (
        'c',
        &[
            ("de", "[DE]"),
            ("eu", "[GB]"),
            ("us", "[US]"),
            ("ap", "[JP]"),
        ],
        "us",
    ),
];

fn location(suffix: &str) -> &'static str {
    match suffix {
        "us" => "{ lat: 39.0, lon: -77.5 }",
        "eu" => "{ lat: 53.35, lon: -6.26 }",
        "de" => "{ lat: 50.1, lon: 8.7 }",
        _ => "{ lat: 35.7, lon: 139.7 }",
    }
}

fn config_yaml(geoip: &Path, letter: char, regions: &[(&str, &str)], default: &str) -> String {
    let mut yaml = format!(
        "geoip: {{ database: \"{}\" }}\ntrusted_proxies: [127.0.0.0/8]\n{}default_region: {letter}-{default}\nedges:\n  report_interval: 1s\n  missed_reports: 3\n  grace_period: 1ms\n  probe_timeout: 1s\nregions:\n",
        geoip.display(),
        support::NO_REQUEST_LIMITS,
    );
    for (suffix, countries) in regions {
        yaml.push_str(&format!(
            "  - id: {letter}-{suffix}\n    location: {}\n    countries: {countries}\n",
            location(suffix)
        ));
    }
    yaml
}

/// Replaces the config file whole (a reload never reads half a file), then signals.
fn install(dir: &Path, config: &Path, yaml: &str, pid: u32) {
    let next = dir.join("regions.yaml.next");
    std::fs::write(&next, yaml).expect("write config");
    std::fs::rename(&next, config).expect("replace config");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success(), "kill -HUP {pid}");
}

/// The region config `letter` sends client `ip` to when its country is listed (one
/// that is not goes to the nearest region).
fn expected_region(letter: char, ip: &str) -> Option<String> {
    let country = match CLIENTS.iter().position(|c| *c == ip) {
        Some(0) => "[GB]",
        Some(1) => "[US]",
        Some(2) => "[JP]",
        _ => "[DE]",
    };
    let (_, regions, _) = CONFIGS
        .iter()
        .find(|(l, _, _)| *l == letter)
        .expect("a config of this letter");
    regions
        .iter()
        .find(|(_, countries)| *countries == country)
        .map(|(suffix, _)| format!("{letter}-{suffix}"))
}

/// The letter of the config an id belongs to (`a-eu`, `edge-a-eu`).
fn letter(id: &str) -> Option<char> {
    id.strip_prefix("edge-").unwrap_or(id).chars().next()
}

/// Every region and edge id an answer names.
fn ids(answer: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: &Value| {
        if let Some(s) = v.as_str() {
            out.push(s.to_string());
        }
    };
    // A session answer.
    push(&answer["region"]);
    push(&answer["edge"]["id"]);
    push(&answer["edge"]["region"]);
    // An explain answer.
    push(&answer["preferred_region"]);
    push(&answer["geoip"]["region"]);
    push(&answer["answer"]["region"]);
    push(&answer["answer"]["edge"]);
    for candidate in answer["candidates"].as_array().into_iter().flatten() {
        push(&candidate["region"]);
        push(&candidate["edge"]);
    }
    out
}

#[derive(Default)]
struct Tally {
    answers: AtomicU64,
    problems: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    /// Checks one answer: no 5xx, one config's letter throughout, and the client's
    /// region under that config (`placed`: the region the answer names for the client).
    fn check(&self, what: &str, status: u16, body: &str, ip: &str, placed: &[&str]) {
        self.answers.fetch_add(1, Ordering::Relaxed);
        let mut problems = self.problems.lock().expect("lock");
        if status >= 500 || status == 0 {
            problems.push(format!("{what}: {status} {body}"));
            return;
        }
        if status >= 300 {
            return;
        }
        let Ok(answer) = serde_json::from_str::<Value>(body) else {
            problems.push(format!("{what}: not JSON: {body}"));
            return;
        };
        let ids = ids(&answer);
        let letters: BTreeSet<Option<char>> = ids.iter().map(|id| letter(id)).collect();
        if ids.is_empty() || letters.len() != 1 {
            problems.push(format!("{what}: mixes configs {ids:?}: {body}"));
            return;
        }
        let Some(Some(letter)) = letters.into_iter().next() else {
            return;
        };
        let Some(expected) = expected_region(letter, ip) else {
            return;
        };
        for field in placed {
            let region = answer[field]["region"]
                .as_str()
                .or_else(|| answer[field].as_str());
            if region != Some(expected.as_str()) {
                problems.push(format!(
                    "{what} for {ip}: {field} is {region:?}, not {expected}: {body}"
                ));
            }
        }
    }
}

/// A protocol edge kept alive (reports, pings answered) until `stop`.
fn keep_alive(mut edge: TestEdge, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tick.tick() => edge.report(0).await,
                frame = edge.ws.next() => if frame.is_none() { return },
            }
        }
    })
}

async fn preferred_region(base: &str, ip: &str) -> Option<String> {
    let response = http()
        .get(format!("{base}/v1/admin/explain?ip={ip}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .ok()?;
    let answer: Value = response.json().await.ok()?;
    answer["preferred_region"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_stay_within_one_config_while_reloads_reorder_add_and_remove_regions() {
    let dir = tempfile::tempdir().expect("dir");
    let geoip = write_geoip(dir.path());
    let config = dir.path().join("regions.yaml");
    let yamls: Vec<String> = CONFIGS
        .iter()
        .map(|(letter, regions, default)| config_yaml(&geoip, *letter, regions, default))
        .collect();
    std::fs::write(&config, &yamls[0]).expect("write config");
    let log_path: PathBuf = dir.path().join("locator.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let locator = LocatorProcess::spawn(&config, dir.path(), &[("RUST_LOG", "info")], log);
    let addr = locator.addr;
    let pid = locator.child.id();
    let base = format!("http://{addr}");
    eventually("the locator is ready", || async {
        get_text(&format!("{base}/readyz")).await.0 == 200
    })
    .await;

    // Each config's edges register while it is loaded (a region must exist to register
    // in it); they stay connected through the reloads that follow.
    let stop = Arc::new(AtomicBool::new(false));
    let mut edges = Vec::new();
    for (i, (generation, regions, _)) in CONFIGS.iter().enumerate() {
        if i > 0 {
            install(dir.path(), &config, &yamls[i], pid);
        }
        eventually("the config is loaded", || async {
            preferred_region(&base, CLIENTS[0])
                .await
                .is_some_and(|r| letter(&r) == Some(*generation))
        })
        .await;
        for (suffix, _) in regions.iter() {
            let region = format!("{generation}-{suffix}");
            let edge =
                TestEdge::connect(addr, register(&format!("edge-{region}"), &region, 1_000)).await;
            edges.push(keep_alive(edge, stop.clone()));
        }
    }

    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + HAMMER;
    let reloads = tokio::spawn({
        let (dir, config, yamls) = (dir.path().to_path_buf(), config.clone(), yamls.clone());
        async move {
            let mut n = 0usize;
            while tokio::time::Instant::now() < deadline {
                // a, b, c, b, a, b, c, …: every pair of configs follows each other.
                let i = [0, 1, 2, 1][n % 4];
                install(&dir, &config, &yamls[i], pid);
                n += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            n
        }
    });
    let mut clients = Vec::new();
    for worker in 0..6usize {
        let (tally, base) = (tally.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            let client = http();
            let mut sessions: Vec<String> = Vec::new();
            let mut n = worker;
            while tokio::time::Instant::now() < deadline {
                n += 1;
                let ip = CLIENTS[n % CLIENTS.len()];
                // A few keyed rooms shared by every worker (joined where they live, moved
                // when their edge's region is gone), and ad-hoc sessions.
                let body = if n % 3 == 0 {
                    "{}".to_string()
                } else {
                    format!("{{\"key\": \"room-{}\"}}", n % 8)
                };
                let response = client
                    .post(format!("{base}/v1/sessions"))
                    .header("X-Forwarded-For", ip)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let (status, text) = match response {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                // A new session is placed in the client's region (an existing room is
                // where it was first placed, for another client).
                let placed: &[&str] = if status == 201 { &["region"] } else { &[] };
                tally.check("create", status, &text, ip, placed);
                if let Some(id) = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["session_id"].as_str().map(str::to_string))
                {
                    sessions.push(id);
                }
                if let Some(id) = sessions.get(n % sessions.len().max(1)) {
                    let (status, text) = get_text(&format!("{base}/v1/sessions/{id}")).await;
                    tally.check("join", status, &text, ip, &[]);
                }
                let response = client
                    .get(format!("{base}/v1/admin/explain?ip={ip}"))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await;
                let (status, text) = match response {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                tally.check("explain", status, &text, ip, &["preferred_region", "geoip"]);
            }
        }));
    }
    for client in clients {
        tokio::time::timeout(HAMMER + Duration::from_secs(20), client)
            .await
            .expect("a client ends after the hammer")
            .expect("client task");
    }
    let signals = reloads.await.expect("reload task");
    stop.store(true, Ordering::Relaxed);
    for edge in edges {
        edge.abort();
    }

    let problems = tally.problems.lock().expect("lock").clone();
    let answers = tally.answers.load(Ordering::Relaxed);
    assert!(
        problems.is_empty(),
        "{} bad answers of {answers}, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert!(!log.contains("panicked"), "the locator panicked:\n{log}");
    let reloaded = log.matches("configuration reloaded").count();
    // Signals arriving together are taken as one: far fewer reloads than signals is
    // fine, but they must have happened while clients were answered.
    assert!(
        answers >= 200 && reloaded >= 20,
        "too little happened: {answers} answers, {reloaded} reloads of {signals} signals"
    );
}
