//! TURN pools checked against real coturn processes on loopback: servers leave and rejoin
//! answers as their coturn stops and starts, a region with its pool down borrows its
//! fallback's relays and says so, a wrong secret is named as an authentication problem,
//! and locator-minted credentials (also across a secret rotation) work for a real
//! allocation by an independent client (`turnutils_uclient`).
//!
//! `scripts/test` installs coturn; without `turnserver` these tests fail with a message
//! saying so (never a silent skip).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use locus_locator::turn::CheckTarget;
use locus_locator::turn::health::{ServerKey, probe};
use serde_json::Value;
use support::*;
use tokio::time::Instant;

const SECRET: &str = "pool-secret-for-tests";

/// A free port for both UDP and TCP on 127.0.0.1 (coturn listens on both).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn require(binary: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{binary} is not installed: run ./scripts/test (it installs coturn) or `apt-get install coturn`"
    );
}

/// A coturn in the foreground with its own config, pidfile and log in a temp dir.
struct Coturn {
    name: String,
    port: u16,
    dir: PathBuf,
    secrets: Vec<String>,
    child: Option<Child>,
}

impl Coturn {
    async fn start(dir: &Path, name: &str, secrets: &[&str]) -> Coturn {
        require("turnserver");
        let mut coturn = Coturn {
            name: name.to_string(),
            port: free_port(),
            dir: dir.to_path_buf(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        coturn.run().await;
        coturn
    }

    /// Starts (again) on the same port, and waits until it answers a STUN Binding.
    async fn run(&mut self) {
        // Relay ports: a small range of their own, from the listening port (coturn skips
        // a port another process holds).
        let min_port = 20_000 + (self.port % 20_000);
        let mut conf = format!(
            "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={}\nmin-port={}\nmax-port={}\n\
             fingerprint\nuse-auth-secret\nrealm=locus.test\nno-tls\nno-dtls\nno-cli\n\
             allow-loopback-peers\nno-rfc5780\nno-software-attribute\n\
             pidfile={}\nuserdb={}\nlog-file={}\nsimple-log\n",
            self.port,
            min_port,
            min_port + 40,
            self.dir.join(format!("{}.pid", self.name)).display(),
            self.dir.join(format!("{}.db", self.name)).display(),
            self.dir.join(format!("{}.log", self.name)).display(),
        );
        for secret in &self.secrets {
            conf.push_str(&format!("static-auth-secret={secret}\n"));
        }
        let path = self.dir.join(format!("{}.conf", self.name));
        std::fs::write(&path, conf).expect("write coturn config");
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        self.child = Some(child);
        let target = CheckTarget {
            key: ServerKey::new("test", &format!("stun:127.0.0.1:{}", self.port)),
            minter: None,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let answered =
                tokio::time::timeout(Duration::from_millis(300), probe::check(&target, 0)).await;
            if matches!(answered, Ok(Ok(_))) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "{} exited at start ({status}): see {}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} does not answer on port {}: see {}",
                self.name,
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        self.dir
            .join(format!("{}.log", self.name))
            .display()
            .to_string()
    }

    /// SIGKILL: gone at once, as a crashed server.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self, transport: &str) -> String {
        format!("turn:127.0.0.1:{}?transport={transport}", self.port)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `locator serve` process.
struct Locator {
    child: Child,
    base: String,
}

impl Locator {
    async fn start(dir: &Path, name: &str, config: &Path, env: &[(&str, &str)]) -> Locator {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_locator"));
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--database")
            .arg(dir.join(format!("{name}.sqlite")))
            .env("LOCATOR_EDGE_KEY", EDGE_KEY)
            .env("LOCATOR_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join(format!("{name}.log")))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start the locator binary");
        let locator = Locator {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http()
            .get(format!("{}/healthz", locator.base))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "locator {name} does not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        locator
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.base
            .trim_start_matches("http://")
            .parse()
            .expect("addr")
    }

    /// One fake edge per region, so answers name each region's ICE servers.
    async fn edges(&self, regions: &[&str]) -> Vec<TestEdge> {
        let mut edges = Vec::new();
        for region in regions {
            let mut edge =
                TestEdge::connect(self.addr(), register(&format!("e-{region}"), region, 100)).await;
            edge.report(0).await;
            edges.push(edge);
        }
        // Answers need the edges' first reports taken in.
        for region in regions {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let response = http()
                    .get(format!("{}/v1/locate?region={region}", self.base))
                    .send()
                    .await
                    .expect("locate");
                let ok = response.status().is_success()
                    && response
                        .json::<Value>()
                        .await
                        .map(|a| a["edge"]["region"] == *region)
                        .unwrap_or(false);
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "no edge of {region} in answers");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        edges
    }

    async fn get(&self, path: &str) -> Value {
        let response = http()
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("request");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }

    async fn text(&self, path: &str) -> String {
        http()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("text")
    }

    async fn locate(&self, region: &str) -> Value {
        let answer = self.get(&format!("/v1/locate?region={region}")).await;
        assert_eq!(answer["edge"]["region"], region, "{answer}");
        answer
    }

    /// The region's pool as the admin status shows it.
    async fn pool(&self, region: &str) -> Value {
        let status = self.get("/v1/admin/status").await;
        status["regions"]
            .as_array()
            .and_then(|regions| regions.iter().find(|r| r["id"] == region))
            .map(|r| r["turn"].clone())
            .unwrap_or_else(|| panic!("no region {region} in {status}"))
    }
}

impl Drop for Locator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TURN entry of an answer: (urls, username, credential).
fn turn_entry(answer: &Value) -> Option<(Vec<String>, String, String)> {
    answer["ice_servers"].as_array()?.iter().find_map(|s| {
        let urls = s["urls"]
            .as_array()?
            .iter()
            .filter_map(|u| u.as_str().map(str::to_string))
            .collect();
        Some((
            urls,
            s["username"].as_str()?.to_string(),
            s["credential"].as_str()?.to_string(),
        ))
    })
}

fn turn_urls(answer: &Value) -> Vec<String> {
    turn_entry(answer).map(|t| t.0).unwrap_or_default()
}

/// Polls `region`'s answers on `locator` until `done` holds; returns how long it took.
async fn until(
    locator: &Locator,
    region: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let answer = locator.locate(region).await;
        if done(&answer) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; last answer {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A real allocation by an independent client with the given credential: `-y` relays
/// between two allocations of its own, so no peer process is needed.
async fn uclient(port: u16, tcp: bool, username: &str, credential: &str) -> bool {
    require("turnutils_uclient");
    let mut command = tokio::process::Command::new("turnutils_uclient");
    command.args(["-y", "-n", "2", "-m", "1", "-l", "100"]);
    if tcp {
        command.arg("-t");
    }
    command
        .args(["-u", username, "-w", credential, "-p", &port.to_string()])
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start turnutils_uclient");
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => panic!("turnutils_uclient did not finish within 30 s"),
    }
}

const INTERVAL_MS: u64 = 1000;
const TIMEOUT_MS: u64 = 700;
const DOWN_AFTER: u64 = 2;

fn checks_yaml() -> String {
    format!(
        "turn:\n  check_interval: {INTERVAL_MS}ms\n  check_timeout: {TIMEOUT_MS}ms\n  down_after: {DOWN_AFTER}\n  up_after: 1\n\
         # The fake edges report once: keep them active for the whole test.\n\
         edges:\n  report_interval: 10m\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_pools_follow_their_coturns_fall_back_and_name_auth_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Coturn::start(dir.path(), "a", &[SECRET]).await;
    let b = Coturn::start(dir.path(), "b", &[SECRET]).await;
    let mut c = Coturn::start(dir.path(), "c", &[SECRET]).await;
    let d = Coturn::start(dir.path(), "d", &[SECRET]).await;
    let config = dir.path().join("regions.yaml");
    std::fs::write(
        &config,
        format!(
            r#"default_region: pool
{checks}regions:
  - id: pool
    location: {{ lat: 50.0, lon: 0.0 }}
    fallback: [spare]
    turn:
      secret_env: LOCUS_T12_SECRET
      servers: ["{a_udp}", "{b_tcp}", "stun:127.0.0.1:{a_port}"]
  - id: solo
    location: {{ lat: 40.0, lon: -70.0 }}
    fallback: [spare]
    turn:
      secret_env: LOCUS_T12_SECRET
      servers: ["{c_udp}"]
  - id: spare
    location: {{ lat: 35.0, lon: 139.0 }}
    turn:
      secret_env: LOCUS_T12_SECRET
      servers: ["{d_udp}"]
  - id: wrong
    location: {{ lat: -30.0, lon: 150.0 }}
    fallback: [spare]
    turn:
      secret_env: LOCUS_T12_WRONG
      servers: ["{a_udp}"]
"#,
            checks = checks_yaml(),
            a_udp = a.url("udp"),
            b_tcp = b.url("tcp"),
            a_port = a.port,
            c_udp = c.url("udp"),
            d_udp = d.url("udp"),
        ),
    )
    .expect("write config");
    let env = [
        ("LOCUS_T12_SECRET", SECRET),
        ("LOCUS_T12_WRONG", "not-the-coturn-secret"),
    ];
    // Two locators check on their own; both must follow.
    let l1 = Locator::start(dir.path(), "l1", &config, &env).await;
    let l2 = Locator::start(dir.path(), "l2", &config, &env).await;
    let regions = ["pool", "solo", "spare", "wrong"];
    let _e1 = l1.edges(&regions).await;
    let _e2 = l2.edges(&regions).await;
    let settle = Duration::from_secs(10);

    // Both servers of the pool are up and handed out, on both locators.
    for l in [&l1, &l2] {
        until(l, "pool", settle, "pool checked up", |_| true).await;
        let deadline = Instant::now() + settle;
        loop {
            let pool = l.pool("pool").await;
            let states: Vec<&str> = pool["servers"]
                .as_array()
                .expect("servers")
                .iter()
                .filter_map(|s| s["state"].as_str())
                .collect();
            if states.iter().all(|s| *s == "up") {
                assert!(pool["servers"][0]["rtt_ms"].as_f64().is_some(), "{pool}");
                break;
            }
            assert!(Instant::now() < deadline, "pool not all up: {pool}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let answer = l.locate("pool").await;
        let mut urls = turn_urls(&answer);
        urls.sort();
        let mut want = vec![a.url("udp"), b.url("tcp")];
        want.sort();
        assert_eq!(urls, want, "{answer}");
        assert_eq!(answer["turn_fallback"], Value::Null, "{answer}");
    }

    // A secret coturn does not know: down, the error names authentication, and the
    // region hands out its fallback's relays.
    let deadline = Instant::now() + settle;
    loop {
        let pool = l1.pool("wrong").await;
        let server = &pool["servers"][0];
        if server["state"] == "down" {
            assert_eq!(server["last_error"]["kind"], "auth", "{pool}");
            let message = server["last_error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("authentication"), "{message}");
            assert!(message.contains("401"), "{message}");
            break;
        }
        assert!(Instant::now() < deadline, "wrong secret not down: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = l1.locate("wrong").await;
    assert_eq!(turn_urls(&answer), vec![d.url("udp")], "{answer}");
    assert_eq!(answer["turn_fallback"]["region"], "spare", "{answer}");
    assert_eq!(
        answer["turn_fallback"]["reason_code"], "pool-down",
        "{answer}"
    );

    // The credential the locator hands out works for a real allocation, UDP and TCP.
    let (_, username, credential) = turn_entry(&l1.locate("pool").await).expect("turn entry");
    assert!(
        uclient(a.port, false, &username, &credential).await,
        "UDP allocation with the answer's credential"
    );
    assert!(
        uclient(b.port, true, &username, &credential).await,
        "TCP allocation with the answer's credential"
    );

    // Stop a: gone from both locators' answers within check_interval × N + timeout
    // (+10% jitter, + slack for a loaded machine), its STUN URL too; b stays.
    a.stop();
    let bound = Duration::from_millis(INTERVAL_MS * DOWN_AFTER * 11 / 10 + TIMEOUT_MS);
    let slack = Duration::from_millis(1500);
    let a_url = a.url("udp");
    let a_stun = format!("stun:127.0.0.1:{}", a.port);
    for l in [&l1, &l2] {
        let took = until(l, "pool", bound + slack, "a leaves the answers", |answer| {
            !turn_urls(answer).contains(&a_url)
                && !answer["ice_servers"].to_string().contains(&a_stun)
        })
        .await;
        eprintln!("a left the answers after {took:?} (bound {bound:?})");
        let answer = l.locate("pool").await;
        assert_eq!(turn_urls(&answer), vec![b.url("tcp")], "{answer}");
        assert!(
            !answer["ice_servers"]
                .to_string()
                .contains(&format!("stun:127.0.0.1:{}", a.port)),
            "{answer}"
        );
        assert_eq!(answer["turn_fallback"], Value::Null, "{answer}");
    }
    // Start it again: back in the answers.
    a.run().await;
    for l in [&l1, &l2] {
        until(l, "pool", settle, "a is back", |answer| {
            turn_urls(answer).contains(&a_url)
        })
        .await;
    }

    // solo's only coturn stops: it hands out spare's relays and says so, in answers and
    // on explain.
    c.stop();
    until(&l1, "solo", bound + slack, "solo falls back", |answer| {
        answer["turn_fallback"]["region"] == "spare"
    })
    .await;
    let answer = l1.locate("solo").await;
    assert_eq!(turn_urls(&answer), vec![d.url("udp")], "{answer}");
    let reason = answer["turn_fallback"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("its TURN server is down"), "{reason}");
    assert!(reason.contains("relays of spare"), "{reason}");
    let explain = l1.get("/v1/admin/explain?ip=127.0.0.1&region=solo").await;
    assert_eq!(explain["turn_fallback"]["region"], "spare", "{explain}");
    let pool = l1.pool("solo").await;
    assert_eq!(pool["relay_from"], "spare", "{pool}");
    assert_eq!(pool["servers"][0]["state"], "down", "{pool}");
    assert!(
        pool["servers"][0]["last_check_ms"].as_i64().is_some(),
        "{pool}"
    );

    // Seen by people: metrics and the audit log.
    let metrics = l1.text("/metrics").await;
    let c_series = format!(
        "locator_turn_server_up{{region=\"solo\",server=\"{}\"}} 0",
        c.url("udp")
    );
    assert!(metrics.contains(&c_series), "{c_series} not in\n{metrics}");
    assert!(
        metrics.contains("locator_turn_check_seconds_bucket"),
        "{metrics}"
    );
    // The audit entry is written after the state changes (off the check loop): wait for it.
    let deadline = Instant::now() + settle;
    loop {
        let audit = l1.get("/v1/admin/audit?limit=1000").await;
        let kinds: Vec<(&str, &str)> = audit["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| Some((e["kind"].as_str()?, e["detail"].as_str().unwrap_or(""))))
            .collect();
        let c_down = kinds
            .iter()
            .any(|(k, d)| *k == "turn_server_down" && d.contains(&c.url("udp")));
        let a_up = kinds
            .iter()
            .any(|(k, d)| *k == "turn_server_up" && d.contains(&a_url));
        if c_down && a_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit lacks c's turn_server_down or a's turn_server_up: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_survive_a_secret_rotation_until_they_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    // coturn lists both secrets during the rotation (README: step 1).
    let r = Coturn::start(dir.path(), "r", &["new-secret", "old-secret"]).await;
    let config = dir.path().join("regions.yaml");
    std::fs::write(
        &config,
        format!(
            "default_region: rot\n{}regions:\n  - id: rot\n    location: {{ lat: 0.0, lon: 0.0 }}\n    turn:\n      secret_env: LOCUS_T12_ROT\n      servers: [\"{}\"]\n",
            checks_yaml(),
            r.url("udp")
        ),
    )
    .expect("write config");

    // Before the rotation: the locator knows only the old secret.
    let before = Locator::start(
        dir.path(),
        "before",
        &config,
        &[("LOCUS_T12_ROT", "old-secret")],
    )
    .await;
    let _e = before.edges(&["rot"]).await;
    let (_, old_user, old_credential) =
        turn_entry(&before.locate("rot").await).expect("turn entry");
    drop(_e);
    drop(before);

    // After: the new secret first (it mints), the old one still listed.
    let after = Locator::start(
        dir.path(),
        "after",
        &config,
        &[("LOCUS_T12_ROT", "new-secret,old-secret")],
    )
    .await;
    let _e = after.edges(&["rot"]).await;
    let (_, new_user, new_credential) = turn_entry(&after.locate("rot").await).expect("turn entry");
    assert_ne!(new_credential, old_credential);
    assert_eq!(
        new_credential,
        locus_locator::turn::turn_credential(b"new-secret", &new_user)
    );
    // The check uses the new secret and coturn accepts it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pool = after.pool("rot").await;
        assert_eq!(pool["secrets"], 2, "{pool}");
        if pool["servers"][0]["state"] == "up" {
            break;
        }
        assert!(Instant::now() < deadline, "rotated pool not up: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert!(
        uclient(r.port, false, &new_user, &new_credential).await,
        "a credential of the new secret"
    );
    assert!(
        uclient(r.port, false, &old_user, &old_credential).await,
        "a credential of the retired secret, before its expiry"
    );
    // Expired (a minute ago), correctly signed with the current secret: refused.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expired_user = format!("{}:expired", now - 60);
    let expired_credential = locus_locator::turn::turn_credential(b"new-secret", &expired_user);
    assert!(
        !uclient(r.port, false, &expired_user, &expired_credential).await,
        "an expired credential must be refused"
    );
}
