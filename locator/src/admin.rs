//! The admin page and its JSON API, behind `LOCATOR_ADMIN_TOKEN`.
//!
//! Two ways in, one check ([`require_admin`]):
//! - **Bearer**: `Authorization: Bearer <LOCATOR_ADMIN_TOKEN>` (scripts, curl), compared
//!   in constant time.
//! - **Page session**: `POST /admin/login` (a form with the token and the person's name)
//!   sets an opaque session cookie (`HttpOnly; SameSite=Strict`, `Secure` behind an
//!   HTTPS proxy); the token never goes in the cookie, a URL or a log line. Changes made
//!   with the cookie must also carry `X-Locus-Admin: 1` (a header a cross-site form
//!   cannot send), on top of `SameSite=Strict`. The name is the actor recorded in the
//!   audit log.
//!
//! Routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /admin` | the page (sign-in form when not signed in) |
//! | `POST /admin/login`, `POST /admin/logout` | sign in and out |
//! | `GET /admin/assets/{file}` | CSS, JS and icon, embedded in the binary (no CDN) |
//! | `GET /v1/admin/status` | every region: edges, TURN pool, fallback, traffic ([`status`]) |
//! | `GET /v1/admin/events` | the same status as server-sent events, on change and every second |
//! | `GET /v1/admin/audit` | the audit log, newest first, filtered and paginated |
//! | `POST /v1/admin/edges/{id}/{suspend,resume,drain}` | in [`crate::api`] |
//! | `GET /v1/admin/explain?ip=` | in [`crate::api`] |
//!
//! What the status means: region states (healthy, degraded, down, served by fallback)
//! are defined in [`status`]; "how much of its traffic goes elsewhere" is counted by
//! [`crate::metrics::traffic`] (answers by client region and serving region over a recent window, per
//! locator process). The event stream sends the status on every registry change
//! (coalesced over [`DEBOUNCE`]) and at least every [`TICK`]; it ends on sign-out, session
//! expiry and shutdown, and the page reconnects by itself, showing "connection lost"
//! meanwhile.
//!
//! The page is plain HTML, CSS and JavaScript in `locator/assets/` (a hand-drawn world
//! map included), compiled into the binary with `include_str!`: no front-end server, no
//! CDN, nothing fetched from the internet. It is served with a strict
//! Content-Security-Policy (no inline script, nothing from other origins).

pub mod session;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::rate_limit::Door;
use crate::state::{AppState, now_ms};
use crate::store::{AuditFilter, AuditRecord, MAX_AUDIT_PAGE};
use locus_serve::problem::Problem;
use session::Signed;
use status::{RegionStatus, Summary};

type AppRef = Arc<AppState>;

/// Header the page sends with every change it makes (CSRF defence for cookie sessions).
pub const CSRF_HEADER: &str = "x-locus-admin";

/// Shortest pause between two status events of one stream (coalesces bursts of reports).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// A status event is sent at least this often, so report ages and the traffic window
/// move on the page even when nothing changes.
pub const TICK: Duration = Duration::from_secs(1);

/// Checks `Authorization: Bearer <token>` in constant time.
pub fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Changes something: a cookie session must also send [`CSRF_HEADER`].
    Write,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    /// The admin token as a bearer token.
    Bearer,
    /// A signed-in page session.
    Page(Signed),
}

impl Admin {
    /// The name to record in the audit log, when the session knows it.
    pub fn actor(&self) -> Option<&str> {
        match self {
            Admin::Bearer => None,
            Admin::Page(signed) => Some(&signed.name),
        }
    }
}

fn admin_disabled() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "admin-disabled",
        "Forbidden",
        "the admin API is disabled: set LOCATOR_ADMIN_TOKEN on the locator to enable it",
    )
}

/// The one admin check: a bearer token equal to `LOCATOR_ADMIN_TOKEN` (constant-time
/// compare), or a live page session (plus [`CSRF_HEADER`] for [`Access::Write`]).
pub async fn require_admin(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    access: Access,
) -> Result<Admin, Problem> {
    let Some(expected) = &state.secrets.admin_token else {
        return Err(admin_disabled());
    };
    // Only a bearer token counts as an attempt: a proxy in front may pass on its own
    // `Authorization: Basic …`, and the page's cookie must still work behind it.
    let bearer_given = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"Bearer "));
    if bearer_given {
        let client = admin_client(state, peer, headers);
        let limits = &state.routing().config.limits;
        // Over the limit, even the right token is refused: a guesser learns nothing.
        state.rate_limits.peek(Door::AdminFailure, client, limits)?;
        if bearer_matches(headers, expected) {
            return Ok(Admin::Bearer);
        }
        // Never log what was sent.
        tracing::warn!(%client, "admin API refused: wrong bearer token");
        let _ = state.rate_limits.check(Door::AdminFailure, client, limits);
        return Err(Problem::unauthorized(
            "the Authorization header does not hold the admin token: send `Authorization: Bearer <LOCATOR_ADMIN_TOKEN>`",
        ));
    }
    let signed = match session::cookie_value(headers) {
        Some(id) => session::get(&state.store, id, now_ms()).await.map_err(|e| {
            tracing::error!(error = %e, "cannot check an admin page session");
            Problem::unavailable(
                "database-unavailable",
                "the sign-in cannot be checked now (database unavailable); retry, or use the bearer token",
                2,
            )
        })?,
        None => None,
    };
    let Some(signed) = signed else {
        return Err(Problem::unauthorized(
            "send the admin token as `Authorization: Bearer <LOCATOR_ADMIN_TOKEN>`, or sign in at /admin",
        ));
    };
    if access == Access::Write
        && headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some("1")
    {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "csrf-header-missing",
            "Forbidden",
            format!("changes made with the admin page's cookie must send `{CSRF_HEADER}: 1`"),
        ));
    }
    Ok(Admin::Page(signed))
}

/// The admin routes (merged into [`crate::api::router`]).
pub fn routes() -> OpenApiRouter<AppRef> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(page_slash))
        .routes(routes!(login, login_get))
        .routes(routes!(logout))
        .routes(routes!(asset))
        .routes(routes!(status_json))
        .routes(routes!(events))
        .routes(routes!(audit))
}

#[utoipa::path(
    get,
    path = "/admin/",
    tag = "pages",
    responses((status = 303, description = "To `/admin`", headers(("Location" = String)))),
)]
async fn page_slash() -> Redirect {
    Redirect::to("/admin")
}

#[utoipa::path(
    get,
    path = "/admin/login",
    tag = "pages",
    responses((status = 303, description = "To `/admin`", headers(("Location" = String)))),
)]
async fn login_get() -> Redirect {
    Redirect::to("/admin")
}

// ---------------------------------------------------------------------------------------
// The page and its assets.

const PAGE_HTML: &str = include_str!("../assets/admin.html");
const LOGIN_HTML: &str = include_str!("../assets/login.html");
const WORLD_SVG: &str = include_str!("../assets/world.svg");
const ADMIN_CSS: &str = include_str!("../assets/admin.css");
const ADMIN_JS: &str = include_str!("../assets/admin.js");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// Pages may load only what the locator serves: no inline script, no third party.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    etag: String,
}

fn etag_of(body: &str) -> String {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same content gives the same tag in every process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        ("admin.css", "text/css; charset=utf-8", ADMIN_CSS),
        ("admin.js", "text/javascript; charset=utf-8", ADMIN_JS),
        ("favicon.svg", "image/svg+xml", FAVICON_SVG),
    ]
    .into_iter()
    .map(|(name, content_type, body)| Asset {
        name,
        content_type,
        body,
        etag: etag_of(body),
    })
    .collect()
});

/// The asset version in the page's URLs, so a new binary's assets are never mixed with
/// an old cached copy.
static ASSET_VERSION: LazyLock<String> = LazyLock::new(|| {
    etag_of(&ASSETS.iter().map(|a| a.etag.as_str()).collect::<String>())
        .trim_matches('"')
        .chars()
        .take(12)
        .collect()
});

static PAGE: LazyLock<String> = LazyLock::new(|| {
    PAGE_HTML
        .replace("{{WORLD_MAP}}", WORLD_SVG)
        .replace("{{V}}", &ASSET_VERSION)
});

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        // Same-origin requests keep their `Origin`; nothing leaks to linked sites.
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// The sign-in page, with an optional message (fixed texts only).
fn login_page(status: StatusCode, message: Option<&str>, name: &str) -> Response {
    let message = message
        .map(|m| {
            format!(
                "<p class=\"login-message\" role=\"alert\">{}</p>",
                html_escape(m)
            )
        })
        .unwrap_or_default();
    let body = LOGIN_HTML
        .replace("{{V}}", &ASSET_VERSION)
        .replace("{{MESSAGE}}", &message)
        .replace("{{NAME}}", &html_escape(name));
    html_response(status, body)
}

#[utoipa::path(
    get,
    path = "/admin",
    tag = "pages",
    summary = "The admin page (a sign-in form when not signed in)",
    responses(
        (status = 200, description = "The page, or the sign-in form", content_type = "text/html; charset=utf-8", body = String),
        (status = 403, description = "The admin page is disabled", content_type = "text/html; charset=utf-8", body = String),
        (status = 503, description = "The sign-in cannot be checked now", content_type = "text/html; charset=utf-8", body = String),
    )
)]
async fn page(State(state): State<AppRef>, headers: HeaderMap) -> Response {
    if state.secrets.admin_token.is_none() {
        return login_page(
            StatusCode::FORBIDDEN,
            Some(
                "The admin page is disabled: set LOCATOR_ADMIN_TOKEN on the locator to enable it.",
            ),
            "",
        );
    }
    let signed = match session::cookie_value(&headers) {
        Some(id) => match session::get(&state.store, id, now_ms()).await {
            Ok(signed) => signed,
            Err(error) => {
                tracing::error!(%error, "cannot check an admin page session");
                return login_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(
                        "The locator cannot reach its database to check your sign-in; retry shortly.",
                    ),
                    "",
                );
            }
        },
        None => None,
    };
    match signed {
        Some(signed) => html_response(
            StatusCode::OK,
            PAGE.replace("{{ADMIN_NAME}}", &html_escape(&signed.name)),
        ),
        None => login_page(StatusCode::OK, None, ""),
    }
}

#[utoipa::path(
    get,
    path = "/admin/assets/{name}",
    tag = "pages",
    params(("name" = String, Path, description = "The file name")),
    responses(
        (status = 200, description = "The file (CSS, JavaScript or SVG)", content(
            (String = "text/css; charset=utf-8"),
            (String = "text/javascript; charset=utf-8"),
            (String = "image/svg+xml"),
        ), headers(("ETag" = String))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "No such file", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return Problem::not_found("no-such-asset", "no such file in the admin page's assets")
            .into_response();
    };
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == asset.etag));
    let mut response = if cached {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, etag);
    }
    response
}

// ---------------------------------------------------------------------------------------
// Sign in and out.

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct LoginForm {
    token: String,
    #[serde(default)]
    name: String,
}

/// The client an admin attempt is counted against: the address the trusted-proxy rules
/// give, or the peer itself when its forwarding headers are malformed.
fn admin_client(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> std::net::IpAddr {
    let routing = state.routing();
    let config = &routing.config;
    crate::client_ip::client_ip(
        peer.ip(),
        headers,
        &config.trusted_proxies,
        config.forwarded_header,
    )
    .unwrap_or_else(|_| peer.ip().to_canonical())
}

/// Whether the browser reached us over HTTPS: only a trusted proxy is believed
/// (`X-Forwarded-Proto: https` or `Forwarded: proto=https`).
fn came_over_https(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> bool {
    if !crate::client_ip::is_trusted_proxy(peer.ip(), &state.routing().config.trusted_proxies) {
        return false;
    }
    let x_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([';', ',']))
        .filter_map(|pair| pair.split_once('='))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("proto")
                && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
        });
    x_proto || forwarded
}

/// A form posted from another origin is refused. Browsers say where a request comes
/// from with `Sec-Fetch-Site` (only `same-origin`, or `none` for something the person
/// did themselves, is accepted), older ones with `Origin`; tools like curl send neither.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some("null"), _) => true,
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            !origin_host.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

#[utoipa::path(
    post,
    path = "/admin/login",
    tag = "pages",
    summary = "Sign in to the admin page (sets the session cookie)",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in: to `/admin`", headers(("Location" = String), ("Set-Cookie" = String))),
        (status = 400, description = "Not the form", content_type = "text/html; charset=utf-8", body = String),
        (status = 401, description = "Wrong token", content_type = "text/html; charset=utf-8", body = String),
        (status = 403, description = "The admin page is disabled, or the form came from another site", content_type = "text/html; charset=utf-8", body = String),
        (status = 429, description = "Too many failed attempts", content_type = "text/html; charset=utf-8", body = String, headers(("Retry-After" = u64))),
        (status = 429, description = "Too many wrong admin tokens from this address", content_type = "text/html; charset=utf-8", body = String),
        (status = 503, description = "The database cannot be reached", content_type = "text/html; charset=utf-8", body = String, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn login(
    State(state): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Some(expected) = &state.secrets.admin_token else {
        return login_page(
            StatusCode::FORBIDDEN,
            Some(
                "The admin page is disabled: set LOCATOR_ADMIN_TOKEN on the locator to enable it.",
            ),
            "",
        );
    };
    if cross_site(&headers) {
        tracing::warn!(client = %peer.ip(), "admin sign-in from another site refused");
        return login_page(
            StatusCode::FORBIDDEN,
            Some("Sign in from the locator's own /admin page."),
            "",
        );
    }
    let Ok(Form(form)) = form else {
        return login_page(
            StatusCode::BAD_REQUEST,
            Some("Fill in the admin token and your name."),
            "",
        );
    };
    let name = session::clean_name(&form.name);
    let client = admin_client(&state, peer, &headers);
    let limits = state.routing().config.limits.clone();
    if let Err(problem) = state.rate_limits.peek(Door::AdminFailure, client, &limits) {
        tracing::warn!(%client, "admin sign-in refused: too many wrong tokens");
        return login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&problem.detail),
            name.as_deref().unwrap_or_default(),
        );
    }
    let token_ok: bool = form.token.as_bytes().ct_eq(expected.as_bytes()).into();
    if !token_ok {
        // Never log what was typed.
        tracing::warn!(%client, "admin sign-in refused: wrong token");
        let _ = state.rate_limits.check(Door::AdminFailure, client, &limits);
        // Slows down guessing from one connection; the token has at least 128 bits anyway.
        tokio::time::sleep(Duration::from_millis(300)).await;
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token of this locator."),
            name.as_deref().unwrap_or_default(),
        );
    }
    let Some(name) = name else {
        return login_page(
            StatusCode::BAD_REQUEST,
            Some("Give your name: it is recorded with every change you make."),
            "",
        );
    };
    let id = match session::create(&state.store, &name, now_ms()).await {
        Ok(id) => id,
        Err(error) => {
            tracing::error!(%error, "cannot record an admin sign-in");
            return login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(
                    "The locator cannot reach its database to record your sign-in; retry shortly.",
                ),
                &name,
            );
        }
    };
    tracing::info!(client = %peer.ip(), actor = %name, "admin signed in");
    let secure = came_over_https(&state, peer, &headers);
    let mut response = Redirect::to("/admin").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::set_cookie(&id, secure)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[utoipa::path(
    post,
    path = "/admin/logout",
    tag = "pages",
    summary = "Sign out of the admin page",
    responses(
        (status = 303, description = "Signed out: to `/admin`", headers(("Location" = String), ("Set-Cookie" = String))),
        (status = 403, description = "The request came from another site", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn logout(
    State(state): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if cross_site(&headers) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "cross-site",
            "Forbidden",
            "sign out from the locator's own /admin page",
        )
        .into_response();
    }
    if let Some(id) = session::cookie_value(&headers) {
        if let Ok(Some(signed)) = session::get(&state.store, id, now_ms()).await {
            tracing::info!(actor = %signed.name, "admin signed out");
        }
        if let Err(error) = session::remove(&state.store, id).await {
            tracing::error!(%error, "an admin sign-out could not be recorded: the session stays valid until it expires");
        }
    }
    let secure = came_over_https(&state, peer, &headers);
    let mut response = Redirect::to("/admin").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::clear_cookie(secure)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

// ---------------------------------------------------------------------------------------
// Status, live events and the audit log.

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LocatorInfo {
    pub version: &'static str,
    pub uptime_secs: u64,
    pub config: String,
    pub database: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttributionView {
    pub text: &'static str,
    pub url: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EdgeTimingView {
    pub report_interval_ms: u64,
    pub missed_reports: u32,
    pub grace_period_ms: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GeoIpView {
    pub database_type: String,
    pub schema: &'static str,
    pub build_epoch: u64,
    pub networks: u64,
    /// Licence-required credit (DB-IP): the page shows it as a link.
    pub attribution: Option<AttributionView>,
}

/// `GET /v1/admin/status` and each event of `/v1/admin/events`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    pub generated_at_ms: i64,
    pub locator: LocatorInfo,
    /// `None` when GeoIP is off (every client goes to the default region).
    pub geoip: Option<GeoIpView>,
    pub default_region: String,
    /// How often edges report, so the page can tell a late report from a fresh one.
    pub edge_timing: EdgeTimingView,
    /// How long the traffic figures of each region cover (see [`crate::metrics::traffic`]).
    pub traffic_window_secs: u64,
    /// Counts of regions and edges by state.
    pub summary: Summary,
    /// Each region: state, edges, TURN pool, fallback, traffic.
    pub regions: Vec<RegionStatus>,
}

/// The status of every region now.
pub fn build_status(state: &AppState) -> Status {
    let now = Instant::now();
    // One generation: the snapshot's region indices are the config's.
    let generation = state.generation();
    let (routing, snapshot) = (&generation.routing, &generation.edges);
    let config = &routing.config;
    let ids: Vec<String> = config.regions.iter().map(|r| r.id.clone()).collect();
    let window = routing.traffic.window(&ids, now);
    let pools = routing.turn.status(config);
    let regions = status::regions(snapshot, config, &routing.plan, &pools, &window, now);
    let store = state.store.describe();
    Status {
        generated_at_ms: now_ms(),
        locator: LocatorInfo {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: state.started.elapsed().as_secs(),
            config: config.source.display().to_string(),
            database: format!("{} {}", store.backend, store.location),
        },
        geoip: state.geo.database_info().map(|info| GeoIpView {
            database_type: info.database_type,
            schema: info.schema.as_str(),
            build_epoch: info
                .build_time
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            networks: info.networks,
            attribution: info.attribution.map(|a| AttributionView {
                text: a.text,
                url: a.url,
            }),
        }),
        default_region: config.default_region().id.clone(),
        edge_timing: EdgeTimingView {
            report_interval_ms: config.edges.report_interval.as_millis() as u64,
            missed_reports: config.edges.missed_reports,
            grace_period_ms: config.edges.grace_period.as_millis() as u64,
        },
        traffic_window_secs: window.length.as_secs(),
        summary: status::summary(&regions),
        regions,
    }
}

fn no_store<T: IntoResponse>(body: T) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[utoipa::path(
    get,
    path = "/v1/admin/status",
    tag = "admin",
    summary = "Every region: edges, TURN pool, fallback, traffic",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The status", body = Status),
        crate::openapi::AdminRefusals,
    )
)]
async fn status_json(
    State(state): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    require_admin(&state, peer, &headers, Access::Read).await?;
    Ok(no_store(Json(build_status(&state))))
}

/// One server-sent event of `GET /v1/admin/events`, as an event-stream reader parses it
/// (OpenAPI 3.1 describes each event of a `text/event-stream` with the answer's schema).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Describes what `EventLoop` writes.
pub struct StatusEvent {
    /// Always `status`.
    #[schema(pattern = "^status$")]
    event: String,
    /// A `Status` as JSON (what `GET /v1/admin/status` answers).
    #[schema(content_media_type = "application/json")]
    data: String,
    /// Milliseconds a client waits before reconnecting (sent with the first event).
    retry: Option<u64>,
    /// Not sent: events carry no id.
    id: Option<String>,
}

/// One event stream's state.
struct EventLoop {
    state: AppRef,
    changes: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
    tick: tokio::time::Interval,
    /// The page session to re-check before each event (signed out or expired: the
    /// stream ends, and the page's reconnect gets a 401).
    session: Option<String>,
    first: bool,
}

fn status_event(state: &AppState) -> Event {
    Event::default()
        .event("status")
        .json_data(build_status(state))
        .unwrap_or_else(|_| Event::default().comment("status unavailable"))
}

async fn next_event(mut s: EventLoop) -> Option<(Result<Event, Infallible>, EventLoop)> {
    if s.first {
        s.first = false;
        s.changes.borrow_and_update();
        s.tick.reset();
        // Reconnect after a second when the stream drops (the browser default is ~3 s).
        let event = status_event(&s.state).retry(TICK);
        return Some((Ok(event), s));
    }
    tokio::select! {
        changed = s.changes.changed() => {
            if changed.is_err() {
                return None;
            }
            // Coalesce a burst of changes (many edges reporting) into one event.
            tokio::time::sleep(DEBOUNCE).await;
        }
        _ = s.tick.tick() => {}
        () = async {
            // The guard `wait_for` returns is not `Send`: drop it here.
            let _ = s.closing.wait_for(|closing| *closing).await;
        } => return None,
    }
    if *s.closing.borrow() {
        return None;
    }
    // Signed out (here or on another locator) or expired: the stream ends. A database
    // that does not answer ends nothing: the session was valid when the stream began.
    if let Some(id) = &s.session
        && let Ok(None) = session::get(&s.state.store, id, now_ms()).await
    {
        return None;
    }
    s.changes.borrow_and_update();
    s.tick.reset();
    let event = status_event(&s.state);
    Some((Ok(event), s))
}

#[utoipa::path(
    get,
    path = "/v1/admin/events",
    tag = "admin",
    summary = "The status as server-sent events, on change and every second",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "An event stream of `status` events", content_type = "text/event-stream", body = StatusEvent),
        crate::openapi::AdminRefusals,
    )
)]
async fn events(
    State(state): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let admin = require_admin(&state, peer, &headers, Access::Read).await?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = EventLoop {
        changes: state.registry.subscribe(),
        closing: state.admin.closing.subscribe(),
        tick,
        session: match admin {
            Admin::Page(signed) => Some(signed.id),
            Admin::Bearer => None,
        },
        first: true,
        state,
    };
    let stream = futures_util::stream::unfold(start, next_event);
    let mut response = sse(stream).into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Reverse proxies (nginx) must not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn sse<S>(stream: S) -> Sse<axum::response::sse::KeepAliveStream<S>>
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /v1/admin/audit` query. Times are Unix milliseconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    edge: Option<String>,
    session: Option<String>,
    /// `at_ms >= since`.
    since: Option<i64>,
    /// `at_ms < until`.
    until: Option<i64>,
    /// Cursor: entries older than this id (the previous page's `next_before`).
    before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AuditPage {
    /// Audit entries (`id`, `at_ms`, `edge_id`, `session_id`, `kind`, `actor`, `detail`…).
    entries: Vec<AuditRecord>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    next_before: Option<i64>,
}

fn nonempty(value: Option<String>, what: &str) -> Result<Option<String>, Problem> {
    match value.map(|v| v.trim().to_string()) {
        Some(v) if v.len() > 128 => Err(Problem::bad_request(
            "bad-audit-query",
            format!("`{what}` is longer than 128 characters"),
        )),
        Some(v) if v.is_empty() => Ok(None),
        other => Ok(other),
    }
}

#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    tag = "admin",
    summary = "The audit log, newest first, filtered and paginated",
    params(
        ("edge" = Option<String>, Query, description = "Only this edge"),
        ("session" = Option<String>, Query, description = "Only this session"),
        ("since" = Option<i64>, Query, description = "Entries at or after (Unix ms)"),
        ("until" = Option<i64>, Query, description = "Entries before (Unix ms)"),
        ("before" = Option<i64>, Query, description = "Cursor: entries older than this id (`next_before`)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)"),
    ),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = 400, description = "Bad query", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::AdminRefusals,
    )
)]
async fn audit(
    State(state): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    require_admin(&state, peer, &headers, Access::Read).await?;
    let Query(query) = query.map_err(|e| {
        Problem::bad_request(
            "bad-audit-query",
            format!(
                "{}; accepted: edge, session, since and until (Unix ms), before (an entry id), limit (1-{MAX_AUDIT_PAGE})",
                e.body_text()
            ),
        )
    })?;
    let limit = query.limit.unwrap_or(0);
    if query.limit.is_some() && !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(Problem::bad_request(
            "bad-audit-query",
            format!("`limit` must be 1 to {MAX_AUDIT_PAGE}"),
        ));
    }
    if let (Some(since), Some(until)) = (query.since, query.until)
        && since >= until
    {
        return Err(Problem::bad_request(
            "bad-audit-query",
            "`since` must be before `until`",
        ));
    }
    let filter = AuditFilter {
        edge_id: nonempty(query.edge, "edge")?,
        session_id: nonempty(query.session, "session")?,
        since_ms: query.since,
        until_ms: query.until,
        before_id: query.before,
        limit,
    };
    let entries = state
        .store
        .audit(&filter)
        .await
        .map_err(|e| Problem::internal("read the audit log", &e))?;
    let page_size = if limit == 0 {
        crate::store::DEFAULT_AUDIT_PAGE
    } else {
        limit
    } as usize;
    let next_before = (entries.len() >= page_size)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(no_store(Json(AuditPage {
        entries,
        next_before,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let mut same = HeaderMap::new();
        same.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7400"));
        same.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7400"),
        );
        assert!(!cross_site(&same));
        let mut other = same.clone();
        other.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(cross_site(&other));
        for (site, refused) in [
            ("cross-site", true),
            ("same-site", true),
            ("same-origin", false),
            ("none", false),
        ] {
            let mut fetch = HeaderMap::new();
            fetch.insert("sec-fetch-site", HeaderValue::from_static(site));
            assert_eq!(cross_site(&fetch), refused, "{site}");
        }
        assert!(!cross_site(&HeaderMap::new()), "curl sends no Origin");
    }

    #[test]
    fn the_page_embeds_the_map_and_versioned_assets() {
        assert!(PAGE.contains("<svg"), "world map inlined");
        assert!(
            !PAGE.replace("{{ADMIN_NAME}}", "").contains("{{"),
            "every placeholder filled but the name"
        );
        assert!(PAGE.contains(&format!("admin.js?v={}", *ASSET_VERSION)));
        for asset in ASSETS.iter() {
            assert!(asset.etag.len() > 4);
        }
    }
}
