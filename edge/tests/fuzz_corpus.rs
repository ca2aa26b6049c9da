//! Replays the fuzz corpora and every crash input found (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same entry points the cargo-fuzz targets
//! call, on stable: CI needs no nightly to keep what the fuzzers found fixed. Lives in
//! the edge's tests because the edge's dev-dependencies reach every crate with a target.

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

fn replay(name: &str, target: Target) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs: Vec<PathBuf> = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(name)) else {
            continue;
        };
        inputs.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    inputs.sort();
    assert!(
        inputs
            .iter()
            .any(|p| p.to_string_lossy().contains("/corpus/")),
        "fuzz/corpus/{name} is empty or missing"
    );
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| target(&data)).is_err() {
            panic!("{} fails its target", path.display());
        }
    }
    eprintln!("{name}: {} inputs replayed", inputs.len());
}

#[test]
fn regions_yaml() {
    replay("regions_yaml", locus_geo::fuzzing::regions_yaml);
}

#[test]
fn mmdb() {
    replay("mmdb", locus_geo::fuzzing::mmdb);
}

#[test]
fn forwarded() {
    replay("forwarded", locus_locator::fuzzing::forwarded);
}

#[test]
fn edge_link_messages() {
    replay(
        "edge_link_messages",
        locus_protocol::fuzzing::edge_link_messages,
    );
}

#[test]
fn edge_link_states() {
    replay("edge_link_states", locus_locator::fuzzing::edge_link_states);
}

#[test]
fn join_token() {
    replay("join_token", locus_protocol::fuzzing::join_token);
}

#[test]
fn session_frame() {
    replay("session_frame", locus_edge::fuzzing::session_frame);
}
