//! Per-edge credentials: what an edge shows the locator to register as itself.
//!
//! `le1:<generation>:<region>:<edge id>:<base64url(HMAC-SHA256(master key, "locus-edge-
//! credential\0" generation "\0" region "\0" edge id))>`. The locator holds only the
//! master key (`LOCATOR_EDGE_KEY`) and derives every edge's credential from it, so there
//! is no per-edge secret to store; the edge holds only its own credential. The id and
//! region are in clear so the locator can check, before the websocket upgrade, which
//! edge the credential belongs to: a credential registers that edge in that region and
//! nothing else. `generation` lets one edge's credential be revoked (the locator's
//! `regions.yaml` names the oldest generation it accepts) without touching the others.
//! `:` separates the parts because edge ids may contain `.`; neither ids nor region ids
//! may contain `:`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Prefix (and version) of every credential.
pub const PREFIX: &str = "le1";

/// Shortest master key accepted (`openssl rand -hex 32` gives 64 characters).
pub const MIN_MASTER_KEY_LEN: usize = 32;

/// The parts of a credential, as presented (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeCredential {
    pub generation: u32,
    pub region: String,
    pub edge_id: String,
    mac: Vec<u8>,
}

/// Why a credential string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "not an edge credential (expected `le1:…`, printed by `locator edge-credential --id ID`); the shared edge token of older versions is no longer accepted"
    )]
    Malformed,
    #[error(
        "edge credential signature is invalid (not issued with this locator's LOCATOR_EDGE_KEY)"
    )]
    BadSignature,
}

fn mac_for(master: &[u8], generation: u32, region: &str, edge_id: &str) -> HmacSha256 {
    let mut mac = match <HmacSha256 as KeyInit>::new_from_slice(master) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(b"locus-edge-credential\0");
    mac.update(generation.to_string().as_bytes());
    mac.update(b"\0");
    mac.update(region.as_bytes());
    mac.update(b"\0");
    mac.update(edge_id.as_bytes());
    mac
}

/// True when `part` can be a region or edge id inside a credential.
fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 64
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The credential of edge `edge_id` in `region`, generation `generation`.
pub fn derive(master: &[u8], generation: u32, region: &str, edge_id: &str) -> String {
    let tag = mac_for(master, generation, region, edge_id)
        .finalize()
        .into_bytes();
    format!(
        "{PREFIX}:{generation}:{region}:{edge_id}:{}",
        URL_SAFE_NO_PAD.encode(tag)
    )
}

impl EdgeCredential {
    /// Splits a presented credential into its parts.
    pub fn parse(text: &str) -> Result<EdgeCredential, CredentialError> {
        let mut parts = text.split(':');
        let (Some(prefix), Some(generation), Some(region), Some(edge_id), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(CredentialError::Malformed);
        };
        if prefix != PREFIX || !valid_part(region) || !valid_part(edge_id) {
            return Err(CredentialError::Malformed);
        }
        let generation = generation
            .parse::<u32>()
            .map_err(|_| CredentialError::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| CredentialError::Malformed)?;
        Ok(EdgeCredential {
            generation,
            region: region.to_string(),
            edge_id: edge_id.to_string(),
            mac,
        })
    }

    /// Checks the signature against each master key in turn (the current key and, during
    /// a rotation, the previous one). Returns the index of the key that signed it.
    pub fn verify(&self, masters: &[&[u8]]) -> Result<usize, CredentialError> {
        for (index, master) in masters.iter().enumerate() {
            let mac = mac_for(master, self.generation, &self.region, &self.edge_id);
            // Constant-time comparison.
            if mac.verify_slice(&self.mac).is_ok() {
                return Ok(index);
            }
        }
        Err(CredentialError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &[u8] = b"master-key-0123456789abcdef-0123456789";

    #[test]
    fn a_derived_credential_parses_and_verifies() {
        let text = derive(MASTER, 3, "eu-west", "edge.a_1");
        assert!(text.starts_with("le1:3:eu-west:edge.a_1:"), "{text}");
        let credential = EdgeCredential::parse(&text).expect("parses");
        assert_eq!(credential.generation, 3);
        assert_eq!(credential.region, "eu-west");
        assert_eq!(credential.edge_id, "edge.a_1");
        assert_eq!(credential.verify(&[MASTER]), Ok(0));
        assert_eq!(credential.verify(&[b"other-master", MASTER]), Ok(1));
        assert_eq!(
            credential.verify(&[b"other-master"]),
            Err(CredentialError::BadSignature)
        );
    }

    #[test]
    fn changing_any_part_breaks_the_signature() {
        let text = derive(MASTER, 1, "eu-west", "edge-a");
        for forged in [
            text.replace("le1:1:", "le1:2:"),
            text.replace(":eu-west:", ":us-east:"),
            text.replace(":edge-a:", ":edge-b:"),
        ] {
            let credential = EdgeCredential::parse(&forged).expect("parses");
            assert_eq!(
                credential.verify(&[MASTER]),
                Err(CredentialError::BadSignature),
                "{forged}"
            );
        }
    }

    #[test]
    fn junk_is_malformed() {
        for junk in [
            "",
            "test-edge-token-0123456789",
            "le1:1:eu-west:edge-a",
            "le2:1:eu-west:edge-a:AAAA",
            "le1:x:eu-west:edge-a:AAAA",
            "le1:1::edge-a:AAAA",
            "le1:1:eu-west:edge-a:AAAA:extra",
            "le1:1:eu west:edge-a:AAAA",
            "le1:1:eu-west:edge-a:!!",
        ] {
            assert_eq!(
                EdgeCredential::parse(junk),
                Err(CredentialError::Malformed),
                "{junk:?}"
            );
        }
    }
}
