//! Join tokens: what a client shows an edge to enter a session.
//!
//! `v1.<base64url(claims JSON)>.<base64url(HMAC-SHA256)>`. The key is derived from the
//! edge's own credential (`LOCATOR_EDGE_TOKEN`, see [`crate::edge_credential`]), which
//! the locator can derive from its master key, so an edge verifies a token locally,
//! without a call to the locator and without a second secret to distribute, and a token
//! signed for one edge is worthless on another. A token is bound to one session, one
//! edge and one participant, and expires: the locator issues tokens for
//! [`JOIN_TOKEN_TTL_SECS`], and an edge refuses any token valid for longer than
//! [`MAX_JOIN_TOKEN_LIFETIME_SECS`] from now (a token minted with a key leaked once
//! cannot be made to last for years).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Lifetime of the join tokens the locator issues.
pub const JOIN_TOKEN_TTL_SECS: u64 = 300;

/// Longest remaining lifetime an edge accepts in a token: the locator's lifetime plus
/// room for clocks that disagree by up to ten minutes.
pub const MAX_JOIN_TOKEN_LIFETIME_SECS: u64 = JOIN_TOKEN_TTL_SECS + 600;

/// What a join token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinClaims {
    /// Session id.
    pub sid: String,
    /// Edge id the session lives on.
    pub eid: String,
    /// Participant id (unique per token issued).
    pub pid: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Why a token was refused. The messages are safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("join token is malformed")]
    Malformed,
    #[error("join token signature is invalid")]
    BadSignature,
    #[error("join token expired")]
    Expired,
    #[error(
        "join token lifetime is too long (the locator issues tokens for {JOIN_TOKEN_TTL_SECS} s)"
    )]
    TooLong,
    #[error("join token is for another session")]
    WrongSession,
    #[error("join token is for another edge")]
    WrongEdge,
}

/// The signing key, derived from the shared edge token.
#[derive(Clone)]
pub struct JoinKey([u8; 32]);

impl std::fmt::Debug for JoinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinKey(…)")
    }
}

impl JoinKey {
    /// Derives the key from `LOCATOR_EDGE_TOKEN` (domain-separated, so the token itself is
    /// never used directly as a MAC key for client-visible data).
    pub fn from_edge_token(edge_token: &str) -> JoinKey {
        let mut mac = mac_with(edge_token.as_bytes());
        mac.update(b"locus join-token key v1");
        JoinKey(mac.finalize().into_bytes().into())
    }

    /// Signs claims into a token.
    pub fn sign(&self, claims: &JoinClaims) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        self.sign_payload(&URL_SAFE_NO_PAD.encode(json))
    }

    /// A token of this (already encoded) payload, signed.
    pub(crate) fn sign_payload(&self, payload: &str) -> String {
        let mut mac = mac_with(&self.0);
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("v1.{payload}.{signature}")
    }

    /// Checks signature and expiry, and that the token is for this session on this edge.
    pub fn verify(
        &self,
        token: &str,
        session_id: &str,
        edge_id: &str,
        now_unix: u64,
    ) -> Result<JoinClaims, TokenError> {
        let rest = token.strip_prefix("v1.").ok_or(TokenError::Malformed)?;
        let (payload, signature) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = mac_with(&self.0);
        mac.update(payload.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: JoinClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now_unix {
            return Err(TokenError::Expired);
        }
        if claims.exp - now_unix > MAX_JOIN_TOKEN_LIFETIME_SECS {
            return Err(TokenError::TooLong);
        }
        if claims.sid != session_id {
            return Err(TokenError::WrongSession);
        }
        if claims.eid != edge_id {
            return Err(TokenError::WrongEdge);
        }
        Ok(claims)
    }
}

fn mac_with(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> JoinClaims {
        JoinClaims {
            sid: "s1".into(),
            eid: "edge-a".into(),
            pid: "p1".into(),
            exp: 1_000,
        }
    }

    #[test]
    fn a_signed_token_verifies_for_its_session_and_edge() {
        let key = JoinKey::from_edge_token("shared-secret");
        let token = key.sign(&claims());
        assert_eq!(key.verify(&token, "s1", "edge-a", 999), Ok(claims()));
    }

    #[test]
    fn refusals() {
        let key = JoinKey::from_edge_token("shared-secret");
        let token = key.sign(&claims());
        assert_eq!(
            key.verify(&token, "s1", "edge-a", 1_000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            key.verify(&token, "s2", "edge-a", 500),
            Err(TokenError::WrongSession)
        );
        assert_eq!(
            key.verify(&token, "s1", "edge-b", 500),
            Err(TokenError::WrongEdge)
        );
        let other = JoinKey::from_edge_token("another-secret");
        assert_eq!(
            other.verify(&token, "s1", "edge-a", 500),
            Err(TokenError::BadSignature)
        );
        // A forged payload with the original signature.
        let (_, signature) = token.rsplit_once('.').expect("three parts");
        let forged_claims = JoinClaims {
            exp: u64::MAX,
            ..claims()
        };
        let forged_payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).expect("json"));
        let forged = format!("v1.{forged_payload}.{signature}");
        // A correctly signed token valid for 50 years is refused.
        let long = key.sign(&JoinClaims {
            exp: 1_000 + 50 * 365 * 86_400,
            ..claims()
        });
        assert_eq!(
            key.verify(&long, "s1", "edge-a", 1_000),
            Err(TokenError::TooLong)
        );
        let longest = key.sign(&JoinClaims {
            exp: 1_000 + MAX_JOIN_TOKEN_LIFETIME_SECS,
            ..claims()
        });
        assert!(key.verify(&longest, "s1", "edge-a", 1_000).is_ok());
        assert_eq!(
            key.verify(&forged, "s1", "edge-a", 500),
            Err(TokenError::BadSignature)
        );
        for junk in ["", "v1.", "v1.a", "v2.a.b", "v1.!!.??", "v1.e30.e30"] {
            assert!(key.verify(junk, "s1", "edge-a", 500).is_err(), "{junk:?}");
        }
    }
}
