//! The `locator` binary's `check-config` and `resolve`, and `serve`'s refusals at start,
//! run as a person would run them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn example_config() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions.yaml");
    std::fs::read_to_string(path).expect("the example regions.yaml")
}

fn locator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_locator"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run locator")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("regions.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// `regions.yaml:N` where N is the 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> String {
    let offset = text.find(needle).expect("needle in text");
    format!("regions.yaml:{}", text[..offset].matches('\n').count() + 1)
}

fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the example no longer contains {from:?}"
    );
    text.replacen(from, to, 1)
}

#[test]
fn the_example_config_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &example_config());
    let out = locator(&["check-config", "--config", path.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("is valid: 7 regions"), "{stdout}");
    assert!(stdout.contains("Locus-Builtin-Demo"), "{stdout}");
}

#[test]
fn broken_variants_fail_with_messages_naming_file_field_and_line() {
    let good = example_config();
    // (description, broken text, what the message must say)
    let unknown_key = replaced(
        &good,
        "    fallback: [us-west, eu-west]",
        "    fallbacks: [us-west, eu-west]",
    );
    let duplicate = replaced(&good, "  - id: us-west", "  - id: us-east");
    let bad_cidr = replaced(&good, "- 198.51.100.0/24", "- 198.51.100.0/33");
    let bad_country = replaced(&good, "countries: [IE, GB,", "countries: [IE, UK,");
    let lines = [
        line_of(&unknown_key, "fallbacks:"),
        line_of(&duplicate, "  - id: us-east\n    name: US West"),
        line_of(&bad_cidr, "198.51.100.0/33"),
        line_of(&bad_country, "countries: [IE, UK,"),
    ];
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown key",
            unknown_key.clone(),
            vec!["unknown field `fallbacks`", &lines[0]],
        ),
        (
            "duplicate region id",
            duplicate.clone(),
            vec![
                "regions[1].id",
                "duplicate region id \"us-east\"",
                &lines[1],
            ],
        ),
        (
            "fallback to an unknown region",
            replaced(&good, "fallback: [us-east]\n", "fallback: [us-central]\n"),
            vec!["regions[2].fallback[0]", "\"us-central\" is not a region"],
        ),
        (
            "invalid CIDR",
            bad_cidr.clone(),
            vec!["regions[1].networks[0]", "not a CIDR network", &lines[2]],
        ),
        (
            "not an ISO country",
            bad_country.clone(),
            vec![
                "regions[3].countries[1]",
                "the United Kingdom is GB",
                &lines[3],
            ],
        ),
        (
            "not a continent",
            replaced(&good, "continents: [AF]", "continents: [AFR]"),
            vec![
                "regions[3].continents[0]",
                "not a continent code",
                "AF (Africa)",
            ],
        ),
        (
            "missing default region",
            replaced(&good, "default_region: us-east\n", ""),
            vec!["default_region: missing", "us-east, us-west"],
        ),
        (
            "latitude out of range",
            replaced(&good, "lat: 53.35", "lat: 153.35"),
            vec!["regions[3].location.lat", "between -90 and 90"],
        ),
        (
            "TURN pool without secret variable",
            replaced(&good, "      secret_env: TURN_SECRET_EU_WEST\n", ""),
            vec!["regions[3].turn.secret_env", "names no secret variable"],
        ),
        (
            "not YAML at all",
            "regions: [\n  - id: {".to_string(),
            vec!["is not a valid regions file"],
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (what, text, needles) in cases {
        let path = write_config(dir.path(), &text);
        let out = locator(&["check-config", "--config", path.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            stderr.contains("regions.yaml"),
            "{what}: file not named:\n{stderr}"
        );
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{what}: missing {needle:?} in:\n{stderr}"
            );
        }
    }
}

#[test]
fn a_missing_or_corrupt_geoip_database_fails_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &example_config());
    let config = path.to_str().expect("utf-8");
    let out = locator(&[
        "check-config",
        "--config",
        config,
        "--geoip",
        "/nonexistent/GeoLite2-City.mmdb",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("geoip.database") && stderr.contains("/nonexistent/GeoLite2-City.mmdb"),
        "{stderr}"
    );

    let junk = dir.path().join("junk.mmdb");
    std::fs::write(&junk, b"this is not a MaxMind DB file").expect("write");
    let out = locator(&[
        "check-config",
        "--config",
        config,
        "--geoip",
        junk.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.mmdb"));
}

/// Issue 16, finding 11: a FIFO as the GeoIP database (or as the config) made
/// `check-config` wait forever for a writer. It is refused at once, named.
#[test]
fn a_fifo_as_geoip_database_or_config_is_refused_without_waiting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &example_config());
    let fifo = dir.path().join("pipe.mmdb");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let fifo = fifo.to_str().expect("utf-8");
    for args in [
        vec![
            "check-config",
            "--config",
            config.to_str().expect("utf-8"),
            "--geoip",
            fifo,
        ],
        vec!["check-config", "--config", fifo],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_locator"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("`locator {}` still waits on the FIFO", args.join(" "));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("read stderr");
        assert!(!status.success());
        assert!(stderr.contains("a FIFO, not a file"), "{stderr}");
        assert!(stderr.contains("pipe.mmdb"), "{stderr}");
    }
}

#[test]
fn resolve_prints_one_json_line_per_address_and_a_clear_error_for_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &example_config());
    let out = locator(&[
        "resolve",
        "--config",
        path.to_str().expect("utf-8"),
        "81.2.69.142",
        "::ffff:8.8.8.8",
        "10.1.2.3",
        "198.51.100.20",
        "not-an-ip",
        "1.1.1.1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad address makes the exit status 2"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 6);
    let expect = |i: usize, ip: &str, country: Option<&str>, region: &str, rule: &str| {
        assert_eq!(lines[i]["ip"], ip, "{}", lines[i]);
        assert_eq!(lines[i]["country"].as_str(), country, "{}", lines[i]);
        assert_eq!(lines[i]["region"], region, "{}", lines[i]);
        assert_eq!(lines[i]["rule"], rule, "{}", lines[i]);
    };
    expect(0, "81.2.69.142", Some("GB"), "eu-west", "country");
    expect(1, "8.8.8.8", Some("US"), "us-east", "country");
    expect(2, "10.1.2.3", None, "us-east", "default");
    expect(3, "198.51.100.20", None, "us-west", "cidr-override");
    assert!(
        lines[4]["error"]
            .as_str()
            .expect("error")
            .contains("is not an IP address")
    );
    expect(5, "1.1.1.1", Some("AU"), "ap-southeast", "country");
    assert_eq!(lines[0]["continent"], "EU");
    assert!(lines[0]["location"]["lat"].is_number());
    assert!(
        lines[2]["detail"]
            .as_str()
            .expect("detail")
            .contains("private")
    );
}

#[test]
fn serve_refuses_half_or_unreadable_tls_flags_before_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("locator.crt");
    std::fs::write(&cert, "not a certificate").expect("write");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--tls-cert", "/nonexistent/c.pem"],
            "--tls-cert needs --tls-key",
        ),
        (
            &["--tls-key", "/nonexistent/k.pem"],
            "--tls-key needs --tls-cert",
        ),
        (
            &[
                "--tls-cert",
                cert.to_str().expect("utf-8"),
                "--tls-key",
                "/nonexistent/k.pem",
            ],
            "locator.crt: holds no certificate",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let output = locator(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flags:?} started");
        assert!(stderr.contains(needle), "{flags:?}: {stderr}");
    }
}
