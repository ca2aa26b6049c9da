//! Signed-in admin page sessions: an opaque random id in an `HttpOnly; SameSite=Strict`
//! cookie, mapped in memory to who signed in and until when. The admin token itself is
//! never put in the cookie (nor in a URL, nor in a log line).
//!
//! Sessions live in this locator's memory: a restart, or a request answered by another
//! replica behind a load balancer, asks the person to sign in again (use sticky sessions
//! for the admin page when running several locators).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use tokio::time::Instant;

/// Name of the session cookie.
pub const COOKIE: &str = "locus_admin";

/// How long a sign-in lasts (absolute, not sliding).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept; signing in beyond this ends the oldest.
pub const MAX_SESSIONS: usize = 256;

/// Longest name kept for the audit log.
pub const MAX_NAME_CHARS: usize = 64;

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    created: Instant,
    expires: Instant,
}

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub id: String,
    /// The name given at sign-in (recorded as the actor of admin actions).
    pub name: String,
}

/// Sessions of the admin page.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for `name`; returns its id (256 random bits, URL-safe).
    pub fn create(&self, name: &str, now: Instant) -> String {
        use base64::Engine;
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut sessions = self.lock();
        sessions.retain(|_, e| e.expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, e)| e.created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(
            id.clone(),
            Entry {
                name: name.to_string(),
                created: now,
                expires: now + SESSION_TTL,
            },
        );
        id
    }

    /// The live session with this id.
    pub fn get(&self, id: &str, now: Instant) -> Option<Signed> {
        let mut sessions = self.lock();
        match sessions.get(id) {
            Some(e) if e.expires > now => Some(Signed {
                id: id.to_string(),
                name: e.name.clone(),
            }),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends a session (sign out). Unknown ids are ignored.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Whether a session is still valid (for long-lived streams).
    pub fn is_live(&self, id: &str, now: Instant) -> bool {
        self.get(id, now).is_some()
    }
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
    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn sessions_expire_and_sign_out() {
        let sessions = Sessions::default();
        let id = sessions.create("alice", Instant::now());
        assert!(id.len() >= 43, "256 bits");
        assert_eq!(
            sessions.get(&id, Instant::now()).map(|s| s.name),
            Some("alice".into())
        );
        assert!(sessions.get("forged", Instant::now()).is_none());
        advance(SESSION_TTL).await;
        assert!(sessions.get(&id, Instant::now()).is_none(), "expired");
        let id = sessions.create("bob", Instant::now());
        sessions.remove(&id);
        assert!(!sessions.is_live(&id, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_number_of_sessions_is_bounded() {
        let sessions = Sessions::default();
        let first = sessions.create("first", Instant::now());
        for i in 0..MAX_SESSIONS {
            advance(Duration::from_millis(1)).await;
            sessions.create(&format!("n{i}"), Instant::now());
        }
        assert!(
            sessions.get(&first, Instant::now()).is_none(),
            "oldest ended"
        );
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
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
