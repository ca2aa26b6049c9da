//! Entry point of the session-frame fuzz target (`fuzz/`), kept here so the stable
//! replay test (`tests/fuzz_corpus.rs`) runs every corpus and crash input through exactly
//! the code the fuzzer ran. Not an API.

use crate::hub::RESERVED_PREFIX;
use crate::media::{Signal, dtls_fingerprint, error_frame, parse_signal};

/// One client text frame on the session websocket, classified as the hub does: relayed
/// as it is, or (starting with `{"locus"`) a reserved frame that must be an `rtc` frame.
/// An rtc frame that is wrong gets an error frame, which must be valid JSON naming `rtc`.
pub fn session_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // Binary frames are relayed untouched.
        return;
    };
    if !text.starts_with(RESERVED_PREFIX) {
        return;
    }
    match parse_signal(text) {
        Ok(Signal::Offer(sdp) | Signal::Answer(sdp)) => {
            if let Some(fingerprint) = dtls_fingerprint(&sdp) {
                assert!(sdp.contains(fingerprint));
            }
        }
        Ok(Signal::Candidate(candidate)) => {
            assert!(candidate.is_none_or(|c| !c.candidate.is_empty()));
        }
        Err(Err(detail)) => {
            let frame: serde_json::Value =
                serde_json::from_str(&error_frame(&detail)).expect("an error frame is JSON");
            assert_eq!(frame["locus"], "rtc");
            assert_eq!(frame["type"], "error");
        }
        Err(Ok(_not_rtc)) => {}
    }
}
