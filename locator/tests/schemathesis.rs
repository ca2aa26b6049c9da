//! The published contract tested from outside: a real locator process with two real edge
//! processes, their `/openapi.json` checked by a real OpenAPI 3.1 validator
//! (`openapi-spec-validator`), then schemathesis throws generated requests at both APIs
//! with every check on (see `schemathesis.toml` beside this file for the one left out and
//! why): no 5xx, no answer outside its schema, no undocumented status, stateful where the
//! document has links.
//!
//! Both tools come from the virtualenv `scripts/test` makes (`target/.venv-schemathesis`,
//! pinned versions; `LOCUS_SCHEMATHESIS_VENV` names another). Without it the test says so
//! and passes, except in CI (`CI=true`), where a missing venv is a failure.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Examples per operation and phase: with the coverage phase's own cases this is ~1,000
/// requests, in well under a minute on a loaded machine.
const MAX_EXAMPLES: &str = "20";
/// A fixed seed: the same requests on every run, so a failure reproduces.
const SEED: &str = "17";
/// The longest either run may take before the test fails (a hang must not hold CI).
const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn venv() -> Option<PathBuf> {
    let dir = std::env::var_os("LOCUS_SCHEMATHESIS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join(".venv-schemathesis"));
    if dir.join("bin/schemathesis").exists() && dir.join("bin/openapi-spec-validator").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} has no schemathesis or openapi-spec-validator: scripts/test installs them",
        dir.display()
    );
    eprintln!(
        "skipped: no schemathesis venv at {} (run ./scripts/test, which makes it)",
        dir.display()
    );
    None
}

/// Runs `program` with `args` until it exits (at most [`RUN_DEADLINE`]); panics with its
/// output unless it exits 0.
async fn run_tool(what: &str, program: &Path, args: &[&str], envs: &[(&str, String)], log: &Path) {
    let out = std::fs::File::create(log).expect("tool log");
    let err = out.try_clone().expect("tool log");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        // No colours or terminal width games in the captured report.
        .env("NO_COLOR", "1")
        .env("COLUMNS", "120")
        // Its cache and reports go beside the log, not into the source tree.
        .current_dir(log.parent().expect("the log's folder"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    let status = tokio::time::timeout(RUN_DEADLINE, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} still running after {RUN_DEADLINE:?}"))
        .expect("wait for the tool");
    let report = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "{what} failed ({status}):\n{report}");
    eprintln!("{what}: passed\n{}", tail(&report, 25));
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_in_the_locator_and_edge_apis() {
    let Some(venv) = venv() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let geoip = write_geoip(dir.path());
    let config = dir.path().join("regions.yaml");
    // Request limits off (NO_REQUEST_LIMITS): thousands of requests come from one
    // address. The 429 they would meet is documented (tests/openapi.rs checks it).
    std::fs::write(&config, regions_yaml(&geoip, "30s")).expect("write config");
    let log = std::fs::File::create(dir.path().join("locator.log")).expect("log");
    let locator = LocatorProcess::spawn(
        &config,
        dir.path(),
        &[
            ("LOCUS_TEST_TURN_SECRET", "turn-secret-for-tests"),
            ("RUST_LOG", "warn"),
        ],
        log,
    );
    let addr = locator.addr;
    let base = format!("http://{addr}");
    eventually("the locator is ready", || async {
        get_text(&format!("{base}/readyz")).await.0 == 200
    })
    .await;
    let edges = [("us-east-1", "us-east"), ("eu-west-1", "eu-west")].map(|(id, region)| {
        spawn_edge(&[addr], id, region, &dir.path().join(format!("spool-{id}")))
    });
    eventually("both edges are active on the locator", || async {
        get_text(&format!("{base}/metrics"))
            .await
            .1
            .contains("locator_edges{state=\"active\"} 2")
    })
    .await;

    // Both documents validate as OpenAPI 3.1.
    let validator = venv.join("bin/openapi-spec-validator");
    for (name, url) in [("locator", base.clone()), ("edge", edges[0].url.clone())] {
        let (status, text) = get_text(&format!("{url}/openapi.json")).await;
        assert_eq!(status, 200, "{name} /openapi.json");
        let doc: Value = serde_json::from_str(&text).expect("json");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1."))
        );
        let file = dir.path().join(format!("{name}-openapi.json"));
        std::fs::write(&file, &text).expect("write the document");
        run_tool(
            &format!("openapi-spec-validator on the {name}'s document"),
            &validator,
            &[
                "--schema",
                "3.1",
                "--validation-errors",
                "all",
                file.to_str().expect("utf-8"),
            ],
            &[],
            &dir.path().join(format!("validate-{name}.log")),
        )
        .await;
    }

    let settings = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let schemathesis = venv.join("bin/schemathesis");
    let envs = [(
        "LOCUS_EDGE_CREDENTIAL",
        edge_credential("eu-west-9", "eu-west"),
    )];
    let admin = format!("Authorization: Bearer {ADMIN_TOKEN}");
    // The edge first: the locator's run drains edges through the admin API.
    for (name, url) in [("edge", edges[1].url.clone()), ("locator", base.clone())] {
        let document = format!("{url}/openapi.json");
        let mut args = vec![
            "--config-file",
            settings.to_str().expect("utf-8"),
            "run",
            &document,
            "--checks",
            "all",
            "--exclude-checks",
            "ignored_auth",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            SEED,
            "--workers",
            "1",
            "--request-timeout",
            "10",
        ];
        if name == "locator" {
            args.extend(["--header", &admin]);
        }
        run_tool(
            &format!("schemathesis on the {name}"),
            &schemathesis,
            &args,
            &envs,
            &dir.path().join(format!("schemathesis-{name}.log")),
        )
        .await;
    }
    drop(edges);
}
