//! Signed-in admin page sessions: an opaque random id in an `HttpOnly; SameSite=Strict`
//! cookie; the database keeps the id's SHA-256 with who signed in and until when. The
//! admin token itself is never put in the cookie (nor in a URL, nor in a log line), and
//! the cookie's value is never stored (reading the table does not let anyone sign in).
//!
//! In the database rather than in memory: a sign-in holds across a restart of the
//! locator and, with several locators on one Postgres database, on whichever of them a
//! load balancer picks; signing out ends it on all of them.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// Name of the session cookie.
pub const COOKIE: &str = "locus_admin";

/// How long a sign-in lasts (absolute, not sliding).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept; signing in beyond this ends the oldest.
pub const MAX_SESSIONS: u32 = 256;

/// Longest name kept for the audit log.
pub const MAX_NAME_CHARS: usize = 64;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub id: String,
    /// The name given at sign-in (recorded as the actor of admin actions).
    pub name: String,
}

/// What the database keeps of a cookie value: its SHA-256, in hex.
fn token_hash(id: &str) -> String {
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts a session for `name`; returns its id (256 random bits, URL-safe).
pub async fn create(store: &Store, name: &str, now_ms: i64) -> Result<String, StoreError> {
    use base64::Engine;
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let expires = now_ms.saturating_add(SESSION_TTL.as_millis() as i64);
    store
        .create_admin_session(&token_hash(&id), name, now_ms, expires, MAX_SESSIONS)
        .await?;
    Ok(id)
}

/// The live session with this id.
pub async fn get(store: &Store, id: &str, now_ms: i64) -> Result<Option<Signed>, StoreError> {
    Ok(store
        .admin_session(&token_hash(id), now_ms)
        .await?
        .map(|name| Signed {
            id: id.to_string(),
            name,
        }))
}

/// Ends a session (sign out), on every locator. Unknown ids are ignored.
pub async fn remove(store: &Store, id: &str) -> Result<(), StoreError> {
    store.delete_admin_session(&token_hash(id)).await
}

/// The value of the session cookie, if the request carries one.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A name fit for the audit log: trimmed, without control characters, at most
/// [`MAX_NAME_CHARS`] characters; `None` when nothing is left.
pub fn clean_name(raw: &str) -> Option<String> {
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    let name = name.trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("locator.db");
        let store = Store::open(path.to_str().expect("utf-8"))
            .await
            .expect("store");
        (dir, store)
    }

    #[tokio::test]
    async fn sessions_expire_and_sign_out() {
        let (_dir, store) = store().await;
        let now = 1_700_000_000_000;
        let id = create(&store, "alice", now).await.expect("create");
        assert!(id.len() >= 43, "256 bits");
        assert_eq!(
            get(&store, &id, now).await.expect("get").map(|s| s.name),
            Some("alice".into())
        );
        assert!(get(&store, "forged", now).await.expect("get").is_none());
        let ttl = SESSION_TTL.as_millis() as i64;
        assert!(
            get(&store, &id, now + ttl).await.expect("get").is_none(),
            "expired"
        );
        let id = create(&store, "bob", now).await.expect("create");
        remove(&store, &id).await.expect("remove");
        assert!(get(&store, &id, now).await.expect("get").is_none());
        // What the database holds is not the cookie's value.
        assert_ne!(token_hash(&id), id);
        assert_eq!(token_hash(&id).len(), 64);
    }

    #[tokio::test]
    async fn the_number_of_sessions_is_bounded() {
        let (_dir, store) = store().await;
        let now = 1_700_000_000_000;
        let first = create(&store, "first", now).await.expect("create");
        let mut last = String::new();
        for i in 0..MAX_SESSIONS {
            last = create(&store, &format!("n{i}"), now + 1 + i64::from(i))
                .await
                .expect("create");
        }
        assert!(
            get(&store, &first, now).await.expect("get").is_none(),
            "oldest ended"
        );
        assert!(get(&store, &last, now).await.expect("get").is_some());
    }

    #[test]
    fn the_cookie_is_found_among_others_and_attributes_are_strict() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; locus_admin=abc123"),
        );
        assert_eq!(cookie_value(&headers), Some("abc123"));
        let mut other = HeaderMap::new();
        other.append(
            header::COOKIE,
            HeaderValue::from_static("xlocus_admin=1; a=b"),
        );
        assert_eq!(cookie_value(&other), None);
        let set = set_cookie("abc", true);
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
            assert!(set.contains(attribute), "{set}");
        }
        assert!(!set_cookie("abc", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn names_are_cleaned_for_the_audit_log() {
        assert_eq!(clean_name("  alice \n"), Some("alice".into()));
        assert_eq!(clean_name("\u{7}\t "), None);
        assert_eq!(
            clean_name(&"x".repeat(500)).map(|n| n.len()),
            Some(MAX_NAME_CHARS)
        );
    }
}
