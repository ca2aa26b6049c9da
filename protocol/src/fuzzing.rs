//! Entry points of the coverage-guided fuzz targets (`fuzz/`), kept here so the stable
//! replay test (`edge/tests/fuzz_corpus.rs`) runs every corpus and crash input through
//! exactly the code the fuzzer ran. Not an API: each takes arbitrary bytes and panics
//! only when a property the crate promises is broken.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::join_token::{JoinClaims, JoinKey, MAX_JOIN_TOKEN_LIFETIME_SECS, TokenError};
use crate::{EdgeMessage, LocatorMessage};

/// Edge link decoding: each line of the input is one text frame, decoded as an
/// [`EdgeMessage`] (what the locator reads) and as a [`LocatorMessage`] (what the edge
/// reads). Whatever decodes must encode and decode again to the same message.
pub fn edge_link_messages(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        if let Ok(message) = serde_json::from_slice::<EdgeMessage>(line) {
            let text = serde_json::to_string(&message).expect("an edge message encodes");
            let again: EdgeMessage = serde_json::from_str(&text).expect("what is sent decodes");
            assert_eq!(
                serde_json::to_string(&again).ok().as_deref(),
                Some(text.as_str())
            );
        }
        if let Ok(message) = serde_json::from_slice::<LocatorMessage>(line) {
            let text = serde_json::to_string(&message).expect("a locator message encodes");
            let again: LocatorMessage = serde_json::from_str(&text).expect("what is sent decodes");
            assert_eq!(again, message);
        }
    }
}

const SESSION: &str = "s-fuzz";
const EDGE: &str = "eu-west-1";
const NOW: u64 = 1_700_000_000;

/// Join token verification. The input is tried as a token, and (to get past the MAC,
/// which a fuzzer cannot forge) as the payload of a token signed with the right key.
/// A token that verifies is for this session and edge, not expired and not too long-lived; claims that
/// decode sign into a token that verifies to the same claims.
pub fn join_token(data: &[u8]) {
    let key = JoinKey::from_edge_token("fuzz-edge-token-0123456789abcdef");
    let as_text = String::from_utf8_lossy(data);
    if let Ok(claims) = key.verify(&as_text, SESSION, EDGE, NOW) {
        check_claims(&claims);
    }
    let token = key.sign_payload(&URL_SAFE_NO_PAD.encode(data));
    match key.verify(&token, SESSION, EDGE, NOW) {
        Ok(claims) => check_claims(&claims),
        Err(TokenError::BadSignature) => panic!("a token signed with the key was refused"),
        Err(_) => {}
    }
    if let Ok(claims) = serde_json::from_slice::<JoinClaims>(data) {
        let signed = key.sign(&claims);
        match key.verify(&signed, &claims.sid, &claims.eid, NOW) {
            Ok(back) => assert_eq!(back, claims),
            Err(TokenError::Expired) => assert!(claims.exp <= NOW),
            Err(TokenError::TooLong) => assert!(claims.exp - NOW > MAX_JOIN_TOKEN_LIFETIME_SECS),
            Err(other) => panic!("signed claims did not verify: {other}"),
        }
        // Another key never accepts it.
        let other = JoinKey::from_edge_token("another-edge-token-0123456789abcdef");
        assert!(other.verify(&signed, &claims.sid, &claims.eid, 0).is_err());
    }
}

fn check_claims(claims: &JoinClaims) {
    assert_eq!(claims.sid, SESSION);
    assert_eq!(claims.eid, EDGE);
    assert!(claims.exp > NOW && claims.exp - NOW <= MAX_JOIN_TOKEN_LIFETIME_SECS);
}
