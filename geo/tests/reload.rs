//! Hot reload of the GeoIP database: a replacement (by rename, as `geoipupdate` does) is
//! picked up; a corrupt or missing one is refused, logged once, and the old database keeps
//! serving; lookups on other threads never stop or see anything but a valid answer.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, UNIX_EPOCH};

use locus_geo::config::GeoIpSource;
use locus_geo::mmdb_writer::{MmdbWriter, Value};
use locus_geo::{Config, GeoResolver, ReloadOutcome, Rule};
use tempfile::TempDir;

const EPOCH_A: u64 = 1_700_000_000;
const EPOCH_B: u64 = 1_750_000_000;

const REGIONS: &str = r#"
geoip: { database: GeoLite2-City.mmdb }
default_region: us-east
regions:
  - id: us-east
    location: { lat: 39.0, lon: -77.5 }
    countries: [US]
  - id: uk
    location: { lat: 51.5, lon: -0.1 }
    countries: [GB]
  - id: france
    location: { lat: 48.86, lon: 2.35 }
    countries: [FR]
"#;

/// A database placing 81.2.0.0/16 in `country`. `padding` lengthens the description so that
/// successive files differ in length too (file identity is inode, length and mtime, and
/// mtimes are coarse).
fn database(country: &str, epoch: u64, padding: usize) -> MmdbWriter {
    let mut w = MmdbWriter::new("GeoLite2-City")
        .build_epoch(epoch)
        .description(format!("reload test{}", ".".repeat(padding)));
    let continent = "EU";
    w.insert(
        "81.2.0.0/16".parse().expect("network"),
        Value::city_record(country, continent, Some((50.0, 1.0))),
    );
    w
}

/// Replaces `path` atomically with arbitrary bytes (temporary file, then rename).
fn replace_with_bytes(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("garbage.tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

struct Setup {
    _dir: TempDir,
    db: PathBuf,
    config: Config,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("GeoLite2-City.mmdb");
    database("GB", EPOCH_A, 0).write_to(&db).expect("write A");
    // The database path is relative to the regions file.
    let config =
        Config::parse(REGIONS, &dir.path().join("regions.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.geoip.database, GeoIpSource::File(db.clone()));
    Setup {
        _dir: dir,
        db,
        config,
    }
}

fn client() -> IpAddr {
    "81.2.69.142".parse().expect("ip")
}

fn region_of(resolver: &GeoResolver, config: &Config) -> String {
    let r = resolver.resolve(client());
    assert_eq!(r.rule, Rule::Country, "{r:?}");
    config
        .region_at(r.region)
        .expect("region of this config")
        .id
        .clone()
}

// A minimal `tracing` subscriber that keeps ERROR events with the thread that emitted them,
// to count log lines. It is the global default, installed before any test logs: a scoped
// subscriber (`with_default`) races with other test threads over tracing's per-callsite
// interest cache and can miss events.
#[derive(Debug, Default)]
struct ErrorLog(Mutex<Vec<(ThreadId, String)>>);

struct MessageVisitor<'a>(&'a mut String);

impl tracing::field::Visit for MessageVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for &'static ErrorLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            let mut message = String::new();
            event.record(&mut MessageVisitor(&mut message));
            self.0
                .lock()
                .expect("log lock")
                .push((std::thread::current().id(), message));
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The error log; every test calls this first, so it is installed before anything logs.
fn error_log() -> &'static ErrorLog {
    static LOG: OnceLock<&'static ErrorLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static ErrorLog = Box::leak(Box::default());
        tracing::subscriber::set_global_default(log).expect("no other global subscriber");
        log
    })
}

impl ErrorLog {
    /// The error lines logged by the calling thread.
    fn lines(&self) -> Vec<String> {
        let me = std::thread::current().id();
        self.0
            .lock()
            .expect("log lock")
            .iter()
            .filter(|(thread, _)| *thread == me)
            .map(|(_, line)| line.clone())
            .collect()
    }
}

#[test]
fn replacement_is_loaded_and_bad_replacements_are_refused_once() {
    let log = error_log();
    let s = setup();
    {
        let resolver = GeoResolver::open(&s.config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(region_of(&resolver, &s.config), "uk");
        let info = resolver.database_info().expect("database loaded");
        assert_eq!(info.build_time, UNIX_EPOCH + Duration::from_secs(EPOCH_A));
        assert!(
            matches!(
                resolver.reload_database_if_changed(),
                ReloadOutcome::Unchanged
            ),
            "nothing replaced yet"
        );

        // B replaces A by rename.
        database("FR", EPOCH_B, 1).write_to(&s.db).expect("write B");
        match resolver.reload_database_if_changed() {
            ReloadOutcome::Reloaded(info) => {
                assert_eq!(info.build_time, UNIX_EPOCH + Duration::from_secs(EPOCH_B));
                assert_eq!(info.path, s.db);
            }
            other => panic!("B must be loaded: {other:?}"),
        }
        assert_eq!(region_of(&resolver, &s.config), "france");
        let info = resolver.database_info().expect("database loaded");
        assert_eq!(info.build_time, UNIX_EPOCH + Duration::from_secs(EPOCH_B));
        assert!(matches!(
            resolver.reload_database_if_changed(),
            ReloadOutcome::Unchanged
        ));
        assert!(
            log.lines().is_empty(),
            "a good reload logs no error: {:?}",
            log.lines()
        );

        // Garbage replaces B: refused, B keeps serving, one log line.
        replace_with_bytes(
            &s.db,
            b"this is not a MaxMind DB file, whatever its name says",
        );
        match resolver.reload_database_if_changed() {
            ReloadOutcome::Refused(message) => {
                assert!(message.contains(&s.db.display().to_string()), "{message}");
                assert!(message.contains("still serving"), "{message}");
            }
            other => panic!("garbage must be refused: {other:?}"),
        }
        assert_eq!(region_of(&resolver, &s.config), "france");
        assert_eq!(
            resolver.database_info().map(|i| i.build_time),
            Some(UNIX_EPOCH + Duration::from_secs(EPOCH_B))
        );
        assert_eq!(log.lines().len(), 1, "{:?}", log.lines());
        assert!(
            matches!(
                resolver.reload_database_if_changed(),
                ReloadOutcome::Unchanged
            ),
            "the same bad file is not tried (and logged) again"
        );
        assert_eq!(log.lines().len(), 1, "logged once: {:?}", log.lines());

        // A truncated database replaces the garbage: refused too.
        let good = database("GB", EPOCH_A, 2).to_bytes();
        replace_with_bytes(&s.db, &good[..good.len() / 2]);
        assert!(matches!(
            resolver.reload_database_if_changed(),
            ReloadOutcome::Refused(_)
        ));
        assert_eq!(region_of(&resolver, &s.config), "france");
        assert_eq!(log.lines().len(), 2, "{:?}", log.lines());

        // The file disappears: refused, still serving B.
        std::fs::remove_file(&s.db).expect("remove");
        match resolver.reload_database_if_changed() {
            ReloadOutcome::Refused(message) => {
                assert!(message.contains("disappeared"), "{message}")
            }
            other => panic!("a missing file must be refused: {other:?}"),
        }
        assert_eq!(region_of(&resolver, &s.config), "france");
        assert!(matches!(
            resolver.reload_database_if_changed(),
            ReloadOutcome::Unchanged
        ));
        assert_eq!(log.lines().len(), 3, "{:?}", log.lines());

        // A good file comes back: loaded.
        database("GB", EPOCH_A, 3)
            .write_to(&s.db)
            .expect("write A again");
        assert!(matches!(
            resolver.reload_database_if_changed(),
            ReloadOutcome::Reloaded(_)
        ));
        assert_eq!(region_of(&resolver, &s.config), "uk");
        assert_eq!(log.lines().len(), 3, "{:?}", log.lines());
    }
}

#[test]
fn a_resolver_without_a_database_never_reloads() {
    error_log();
    let config = Config::parse(
        "default_region: a\nregions:\n  - id: a\n    location: { lat: 0.0, lon: 0.0 }\n",
        Path::new("regions.yaml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let resolver = GeoResolver::open(&config).unwrap_or_else(|e| panic!("{e}"));
    assert!(resolver.database_info().is_none());
    assert!(matches!(
        resolver.reload_database_if_changed(),
        ReloadOutcome::Unchanged
    ));
}

#[test]
fn a_missing_or_corrupt_database_at_start_is_an_error() {
    error_log();
    let s = setup();
    std::fs::write(&s.db, b"garbage").expect("write");
    let err = GeoResolver::open(&s.config).expect_err("corrupt at start");
    assert!(err.to_string().contains("GeoLite2-City.mmdb"), "{err}");
    std::fs::remove_file(&s.db).expect("remove");
    let err = GeoResolver::open(&s.config).expect_err("missing at start");
    assert!(err.to_string().contains("GeoLite2-City.mmdb"), "{err}");
}

#[test]
fn lookups_on_other_threads_continue_through_reloads() {
    const THREADS: usize = 4;
    /// Each thread resolves at least this many times, and goes on (up to the maximum)
    /// while the main thread is still reloading.
    const MIN_LOOKUPS: usize = 2_000;
    const MAX_LOOKUPS: usize = 2_000_000;
    const RELOADS: usize = 12;

    let log = error_log();
    let s = setup();
    let resolver = GeoResolver::open(&s.config).unwrap_or_else(|e| panic!("{e}"));
    let uk = s.config.region_index("uk").expect("uk");
    let france = s.config.region_index("france").expect("france");
    let done = AtomicBool::new(false);
    // Lookups completed by all threads: the main thread waits for it to move between
    // reloads, so lookups and reloads really interleave (no sleeps).
    let progress = AtomicUsize::new(0);
    let wait_for_lookups = |n: usize| {
        let target = progress.load(Ordering::Acquire) + n;
        while progress.load(Ordering::Acquire) < target {
            std::thread::yield_now();
        }
    };

    let (answers, outcomes) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let (mut seen_uk, mut seen_france) = (0usize, 0usize);
                    for i in 0..MAX_LOOKUPS {
                        if i >= MIN_LOOKUPS && done.load(Ordering::Acquire) {
                            break;
                        }
                        let r = resolver.resolve(client());
                        progress.fetch_add(1, Ordering::AcqRel);
                        assert_eq!(r.rule, Rule::Country, "{r:?}");
                        if r.region == uk {
                            seen_uk += 1;
                        } else if r.region == france {
                            seen_france += 1;
                        } else {
                            panic!("an answer from neither database: {r:?}");
                        }
                    }
                    (seen_uk, seen_france)
                })
            })
            .collect();

        let mut outcomes = Vec::new();
        for k in 0..RELOADS {
            wait_for_lookups(200);
            // Alternate A and B, with a corrupt replacement every third time.
            if k % 3 == 2 {
                replace_with_bytes(&s.db, format!("garbage {k}").as_bytes());
            } else {
                let (country, epoch) = if k % 2 == 0 {
                    ("FR", EPOCH_B)
                } else {
                    ("GB", EPOCH_A)
                };
                database(country, epoch, 10 + k)
                    .write_to(&s.db)
                    .expect("write");
            }
            let outcome = resolver.reload_database_if_changed();
            let expected_region = region_of(&resolver, &s.config);
            outcomes.push((k, outcome, expected_region));
        }
        wait_for_lookups(200);
        done.store(true, Ordering::Release);
        let answers: Vec<(usize, usize)> = workers
            .into_iter()
            .map(|w| w.join().expect("no lookup thread panicked"))
            .collect();
        (answers, outcomes)
    });

    let mut previous = "uk";
    for (k, outcome, region) in &outcomes {
        if k % 3 == 2 {
            assert!(
                matches!(outcome, ReloadOutcome::Refused(_)),
                "{k}: {outcome:?}"
            );
            assert_eq!(
                region, previous,
                "reload {k} refused: the old database serves"
            );
        } else {
            assert!(
                matches!(outcome, ReloadOutcome::Reloaded(_)),
                "{k}: {outcome:?}"
            );
            previous = if k % 2 == 0 { "france" } else { "uk" };
            assert_eq!(region, previous, "reload {k}");
        }
    }
    for &(seen_uk, seen_france) in &answers {
        assert!(seen_uk + seen_france >= MIN_LOOKUPS);
    }
    // At least 200 lookups followed each reload, so both databases answered some.
    let (uk_total, france_total) = answers
        .iter()
        .fold((0, 0), |(u, f), (seen_uk, seen_france)| {
            (u + seen_uk, f + seen_france)
        });
    assert!(uk_total > 0 && france_total > 0, "{answers:?}");
    assert_eq!(
        log.lines().len(),
        RELOADS / 3,
        "one error line per refused replacement: {:?}",
        log.lines()
    );
}
