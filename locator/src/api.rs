//! The locator's HTTP surface: the client API, the edge link route, operations routes
//! and the admin explain endpoint. Handlers are thin: decisions are made by `geo`,
//! `selection` and the store; this module turns them into JSON and problem answers.

use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use locus_geo::{RegionIndex, Rule, rules::ResolutionView};
use locus_protocol::join_token::JoinClaims;
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin::{Access, require_admin};
use crate::client_ip::client_ip;
use crate::metrics::RouteLabel;
use crate::ops::{self, ActionError, EdgeAction, MoveError, MovedRoom};
use crate::rate_limit::Door;
use crate::registry::Generation;
use crate::routing::Routing;
use crate::selection;
use crate::snapshot::EdgeView;
use crate::state::{AppState, JOIN_TOKEN_TTL, now_ms, now_unix};
use crate::store::{NewSession, SessionRecord, SessionState};
use crate::turn::{IceServer, IceServers, TurnFallback};
use locus_serve::problem::Problem;

type AppRef = Arc<AppState>;

/// Every route of the locator, each registered with its OpenAPI operation
/// (utoipa-axum's `routes!`): the router and `/openapi.json` come from these same calls.
fn routes() -> OpenApiRouter<AppRef> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(locate))
        .routes(routes!(create_session))
        .routes(routes!(get_session))
        .routes(routes!(explain))
        .routes(routes!(admin_edge_action))
        .routes(routes!(edge_link))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(crate::openapi::openapi_json))
        .merge(crate::admin::routes())
        .merge(crate::try_page::routes())
}

/// The locator's OpenAPI document (what `GET /openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::openapi::finish(routes().into_openapi())
}

/// All routes of the locator.
pub fn router(state: AppRef) -> Router {
    let (router, openapi) = routes().split_for_parts();
    let document = crate::openapi::Served::new(&crate::openapi::finish(openapi));
    router
        .fallback(not_found)
        .layer(axum::middleware::map_response(
            locus_serve::problem::rejections_as_problems,
        ))
        .layer(axum::Extension(document))
        .layer(CountRequests(state.clone()))
        .with_state(state)
}

/// `GET /v1/edge/link`: documented here, handled by [`crate::edge_link::handler`].
#[utoipa::path(
    get,
    path = "/v1/edge/link",
    tag = "edge",
    summary = "The edges' websocket (JSON frames of `locus-protocol`)",
    security(("edge_token" = [])),
    responses(
        (status = 101, description = "Switched to the websocket"),
        (status = 400, description = "Not a websocket upgrade", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong edge token", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn edge_link(
    state: State<AppRef>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    crate::edge_link::handler(state, headers, ws).await
}

/// Counts every answered request by route and status (`locator_http_requests_total`).
/// A plain tower layer rather than `middleware::from_fn`: no boxed future and no clone
/// of the inner service per request, and the count is one atomic increment
/// ([`crate::metrics::RequestCounters`]).
#[derive(Clone)]
struct CountRequests(AppRef);

impl<S> tower_layer::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            state: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    state: AppRef,
}

impl<S> tower_service::Service<Request> for Counted<S>
where
    S: tower_service::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The route that matched (set by the router before its routes' layers run).
        let route = RouteLabel::of(
            request
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str),
        );
        CountedFuture {
            inner: self.inner.call(request),
            route,
            state: self.state.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    struct CountedFuture<F> {
        #[pin]
        inner: F,
        route: RouteLabel,
        state: AppRef,
    }
}

impl<F, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.state
                .metrics
                .requests
                .inc(this.route, response.status().as_u16());
        }
        Poll::Ready(result)
    }
}

async fn not_found() -> Problem {
    Problem::not_found("no-such-route", "no such route: see the README for the API")
}

/// The edge a client is sent to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EdgeRef {
    pub id: String,
    pub region: String,
    pub url: String,
}

/// The edge a client is sent to, borrowed from the registry snapshot and the config.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LocatedEdge<'a> {
    pub id: &'a str,
    pub region: &'a str,
    pub url: &'a str,
}

/// `GET /v1/locate`: borrows everything it says (nothing is cloned to build it).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LocateAnswer<'a> {
    /// The client's region (where it would be served if it could).
    pub region: &'a str,
    /// Which GeoIP rule placed the client.
    #[schema(value_type = String)]
    pub rule: Rule,
    /// True when the edge is in another region.
    pub fallback: bool,
    /// Why this edge, for people.
    pub reason: &'a str,
    pub reason_code: &'static str,
    pub edge: LocatedEdge<'a>,
    #[schema(value_type = Vec<IceServer>)]
    pub ice_servers: IceServers<'a>,
    /// Set when `ice_servers` carry another region's relays, or none (STUN only).
    pub turn_fallback: Option<TurnFallback>,
}

impl LocateAnswer<'_> {
    /// Appends the answer as JSON: the bytes `serde_json::to_vec(self)` gives (a test
    /// checks it), written directly. Serde's map machinery escapes every key and value
    /// byte by byte through `io::Write`, which cost more than the rest of the answer.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.extend_from_slice(b"{\"region\":");
        json_string(out, self.region)?;
        out.extend_from_slice(b",\"rule\":");
        json_string(out, self.rule.as_str())?;
        out.extend_from_slice(if self.fallback {
            b",\"fallback\":true,\"reason\":"
        } else {
            b",\"fallback\":false,\"reason\":"
        });
        json_string(out, self.reason)?;
        out.extend_from_slice(b",\"reason_code\":");
        json_string(out, self.reason_code)?;
        out.extend_from_slice(b",\"edge\":{\"id\":");
        json_string(out, self.edge.id)?;
        out.extend_from_slice(b",\"region\":");
        json_string(out, self.edge.region)?;
        out.extend_from_slice(b",\"url\":");
        json_string(out, self.edge.url)?;
        out.extend_from_slice(b"},\"ice_servers\":");
        serde_json::to_writer(&mut *out, &self.ice_servers)?;
        out.extend_from_slice(b",\"turn_fallback\":");
        serde_json::to_writer(&mut *out, &self.turn_fallback)?;
        out.push(b'}');
        Ok(())
    }
}

/// Appends `s` as a JSON string. Text with nothing to escape (ids, URLs, the selection
/// text: the usual case) is copied as is; anything else goes through serde_json, so the
/// escaping is always serde_json's.
fn json_string(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    // A fold rather than `all`: no early exit, so the check is vectorized (the answer's
    // strings are ~300 bytes, and there is normally nothing to find).
    let plain = !s.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// `POST /v1/sessions` and `GET /v1/sessions/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionAnswer {
    pub session_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// True when this call created the session (false: joined an existing room).
    pub created: bool,
    /// The region the session is served from.
    pub region: String,
    pub fallback: bool,
    pub reason: String,
    /// `reason` as a stable code: a selection's (`in-region`, `region-unavailable`…),
    /// `existing-session` (joined where it lives) or `room-moved`.
    pub reason_code: &'static str,
    pub edge: EdgeRef,
    /// The websocket to open, with `?token=<join_token>`.
    pub ws_url: String,
    pub join_token: String,
    pub join_token_expires_at: u64,
    pub ice_servers: Vec<IceServer>,
    /// Set when `ice_servers` carry another region's relays, or none (STUN only).
    pub turn_fallback: Option<TurnFallback>,
}

#[derive(Debug, Deserialize)]
pub struct LocateQuery {
    region: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with an optional \"key\" (room) and \"region\""
)]
pub struct CreateSession {
    /// Stable room key: the same key always joins the same room.
    key: Option<String>,
    /// Preferred region instead of the one GeoIP gives.
    region: Option<String>,
}

/// A random id: 128 bits, URL-safe.
pub fn new_id() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Where the client is and which region it prefers.
struct Placement {
    ip: IpAddr,
    region: RegionIndex,
    rule: Rule,
}

fn place(
    state: &AppState,
    routing: &Routing,
    peer: SocketAddr,
    headers: &HeaderMap,
    requested_region: Option<&str>,
    door: Door,
) -> Result<Placement, Problem> {
    let config = &routing.config;
    let ip = client_ip(
        peer.ip(),
        headers,
        &config.trusted_proxies,
        config.forwarded_header,
    )
    .map_err(|e| Problem::bad_request("bad-forwarded-header", e.to_string()))?;
    state.rate_limits.check(door, ip, &config.limits)?;
    let resolution = state.geo.resolve_for(&routing.rules, ip);
    let region = match requested_region {
        None => resolution.region,
        Some(id) => config.region_index(id).ok_or_else(|| {
            let ids: Vec<&str> = config.regions.iter().map(|r| r.id.as_str()).collect();
            Problem::bad_request(
                "unknown-region",
                format!(
                    "region \"{}\" does not exist; regions: {}",
                    shortened(id),
                    ids.join(", ")
                ),
            )
        })?,
    };
    let rule = resolution.rule;
    routing
        .answers
        .inc(&state.metrics, config, resolution.region, rule);
    Ok(Placement { ip, region, rule })
}

fn no_edge_available() -> Problem {
    Problem::unavailable(
        "no-edge-available",
        "no edge is available in any region; retry shortly",
        2,
    )
}

/// `edge` is of the generation `routing` belongs to.
fn edge_ref(routing: &Routing, edge: &EdgeView) -> EdgeRef {
    EdgeRef {
        id: edge.id.to_string(),
        region: routing.region_id(edge.region).to_string(),
        url: edge.public_url.to_string(),
    }
}

/// `GET /v1/locate`. Takes the request whole (no copy of its headers), parses the query
/// string only when there is one, and answers from borrowed data serialized once.
#[utoipa::path(
    get,
    path = "/v1/locate",
    tag = "client",
    summary = "The edge and ICE servers for this client",
    params(("region" = Option<String>, Query, description = "Preferred region instead of the one GeoIP gives")),
    responses(
        (status = 200, description = "An edge near the client", body = LocateAnswer),
        (status = 400, description = "Unknown region, bad query, or a forwarded header that is not an address", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::RateLimited,
        (status = 503, description = "No edge is available anywhere", body = crate::openapi::ProblemDoc, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn locate(
    State(state): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let requested_region = match request.uri().query() {
        None => None,
        Some(_) => match Query::<LocateQuery>::try_from_uri(request.uri()) {
            Ok(Query(query)) => query.region,
            // A problem like every other error (axum's rejection is plain text).
            Err(rejection) => {
                return Problem::bad_request("bad-query", rejection.body_text()).into_response();
            }
        },
    };
    locate_answer(&state, peer, request.headers(), requested_region.as_deref())
        .unwrap_or_else(IntoResponse::into_response)
}

fn locate_answer(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    requested_region: Option<&str>,
) -> Result<Response, Problem> {
    // One generation for the whole answer, even if a reload lands meanwhile.
    let generation = state.generation();
    let routing = &generation.routing;
    let placement = place(
        state,
        routing,
        peer,
        headers,
        requested_region,
        Door::Locate,
    )?;
    let chosen = ops::select(state, &generation, placement.region).ok_or_else(no_edge_available)?;
    let edge = generation
        .edges
        .edges
        .get(chosen.edge)
        .ok_or_else(no_edge_available)?;
    let region_id = |i: RegionIndex| routing.region_id(i);
    let answer = LocateAnswer {
        region: region_id(placement.region),
        rule: placement.rule,
        fallback: chosen.fallback,
        reason: &chosen.detail(&generation.edges, &routing.config),
        reason_code: chosen.reason.as_str(),
        edge: LocatedEdge {
            id: &edge.id,
            region: region_id(edge.region),
            url: &edge.public_url,
        },
        turn_fallback: None,
        // The client id only names the client in TURN credentials: made only when the
        // region has a relay.
        ice_servers: routing
            .turn
            .ice_servers_for(edge.region, now_unix(), new_id),
    };
    let answer = LocateAnswer {
        turn_fallback: answer.ice_servers.fallback().cloned(),
        ..answer
    };
    Ok(json_response(|out| answer.write_json(out)))
}

thread_local! {
    /// Per-thread scratch buffer for JSON answers: serializing never grows a fresh buffer
    /// step by step, and the body is one allocation of its exact size.
    static JSON_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `application/json` answer with the body `write` appends (what `axum::Json` sends,
/// without its growing buffer).
fn json_response(write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) -> Response {
    let body = JSON_SCRATCH.with(|scratch| {
        let mut buffer = scratch.borrow_mut();
        buffer.clear();
        write(&mut buffer).map(|()| Bytes::copy_from_slice(&buffer))
    });
    match body {
        Ok(body) => {
            let mut response = Response::new(Body::from(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            error.to_string(),
        )
            .into_response(),
    }
}

fn validate_key(key: &str) -> Result<(), Problem> {
    if key.is_empty()
        || key.len() > 200
        || key
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c))
    {
        return Err(Problem::bad_request(
            "bad-room-key",
            "`key` must be 1 to 200 characters without control, bidirectional or invisible formatting characters",
        ));
    }
    Ok(())
}

/// Unicode format characters (category Cf) that make two keys look alike or reorder how
/// a key is displayed (U+202E RIGHT-TO-LEFT OVERRIDE, U+200B ZERO WIDTH SPACE…): a room key
/// is shown to people on the admin page and shared between them.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

/// A client's text quoted back in an error: at most 64 characters, so a 10,000-character
/// value is not echoed whole.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Why a session answer names its edge.
struct AnswerWhy {
    fallback: bool,
    reason: String,
    code: &'static str,
}

/// Builds the answer for a session on `edge` (of the generation `routing` belongs to),
/// with a fresh join token.
fn session_answer(
    state: &AppState,
    routing: &Routing,
    record: &SessionRecord,
    edge: &EdgeView,
    created: bool,
    why: AnswerWhy,
) -> SessionAnswer {
    let AnswerWhy {
        fallback,
        reason,
        code: reason_code,
    } = why;
    let ice = routing
        .turn
        .ice_servers_for(edge.region, now_unix(), || record.id.clone());
    let expires = now_unix() + JOIN_TOKEN_TTL.as_secs();
    let join_token = state.join_key_for(routing, edge).sign(&JoinClaims {
        sid: record.id.clone(),
        eid: edge.id.to_string(),
        pid: new_id(),
        exp: expires,
    });
    SessionAnswer {
        session_id: record.id.clone(),
        key: record.room_key.clone(),
        created,
        region: routing.region_id(edge.region).to_string(),
        fallback,
        reason,
        reason_code,
        edge: edge_ref(routing, edge),
        ws_url: locus_protocol::session_ws_url(&edge.public_url, &record.id),
        join_token,
        join_token_expires_at: expires,
        ice_servers: ice.to_vec(),
        turn_fallback: ice.fallback().cloned(),
    }
}

/// An optional JSON object body, as the OpenAPI document describes it (`Option<T>`): no
/// body, blanks or `null` give `T::default()`; an object is read as `T`. Anything else is
/// refused, arrays included (serde would otherwise read `[a, b]` field by field).
fn optional_object_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    example: &str,
) -> Result<T, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let refused = |why: String| {
        Problem::bad_request(
            "bad-body",
            format!("the body must be a JSON object like {example}: {why}"),
        )
    };
    match serde_json::from_slice(body).map_err(|e| refused(e.to_string()))? {
        serde_json::Value::Null => Ok(T::default()),
        object @ serde_json::Value::Object(_) => {
            serde_json::from_value(object).map_err(|e| refused(e.to_string()))
        }
        other => Err(refused(format!("got {}", json_kind(&other)))),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "client",
    summary = "Start a session, or join the room of `key`",
    request_body(content = Option<CreateSession>, description = "Optional: an empty body starts an ad-hoc session", content_type = "application/json"),
    responses(
        (status = 201, description = "A new session", body = SessionAnswer),
        (status = 200, description = "The existing room of `key` (`created: false`)", body = SessionAnswer),
        (status = 400, description = "Bad body, room key or region", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::BodyTooLarge,
        crate::openapi::RateLimited,
        (status = 503, description = "No edge available, or the database cannot be reached", body = crate::openapi::ProblemDoc, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn create_session(
    State(state): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let request: CreateSession =
        optional_object_body(&body, r#"{"key": "room-42", "region": "eu-west"}"#)?;
    if let Some(key) = &request.key {
        validate_key(key)?;
    }
    // One generation for the whole answer, even if a reload lands meanwhile.
    let generation = state.generation();
    let routing = &generation.routing;
    let placement = place(
        &state,
        routing,
        peer,
        &headers,
        request.region.as_deref(),
        Door::Create,
    )?;
    let chosen =
        ops::select(&state, &generation, placement.region).ok_or_else(no_edge_available)?;
    let edge = generation
        .edges
        .edges
        .get(chosen.edge)
        .ok_or_else(no_edge_available)?;
    let (record, created) = state
        .store
        .create_session(NewSession {
            id: new_id(),
            room_key: request.key.clone(),
            region: routing.region_id(edge.region).to_string(),
            edge_id: edge.id.to_string(),
            now_ms: now_ms(),
        })
        .await
        .map_err(|e| Problem::internal("create the session", &e))?;
    tracing::debug!(session = %record.id, client = %placement.ip, created, "session");
    if created {
        state.note_assignment(edge);
        let answer = session_answer(
            &state,
            routing,
            &record,
            edge,
            true,
            AnswerWhy {
                fallback: chosen.fallback,
                reason: chosen.detail(&generation.edges, &routing.config),
                code: chosen.reason.as_str(),
            },
        );
        return Ok((StatusCode::CREATED, Json(answer)).into_response());
    }
    // An existing room: join it where it lives, unless its edge is gone.
    let answer = join_existing(&state, &generation, record, Some(placement.region)).await?;
    Ok((StatusCode::OK, Json(answer)).into_response())
}

/// The answer for an existing open session: its edge if that still serves it; a keyed
/// room whose edge failed moves to a newly selected edge; an ad-hoc session on a failed
/// edge has ended (410). `preferred` is a region index of `generation`.
///
/// A room another join has just moved to an edge `generation` does not have is answered
/// once more from the current generation: the edge is there when the move was made
/// under a newer config, and the room moves on when the edge's region is gone from the
/// config (an edge this locator knows, missing from the snapshot). An edge not known here
/// at all was just chosen by another locator: 503, retry shortly.
async fn join_existing(
    state: &AppState,
    generation: &Arc<Generation>,
    record: SessionRecord,
    preferred: Option<RegionIndex>,
) -> Result<SessionAnswer, Problem> {
    let mut generation = generation.clone();
    let (mut record, mut preferred) = (record, preferred);
    // Each further attempt follows a move made meanwhile: a few are plenty, even with
    // reloads coming one after the other.
    for _ in 0..MOVES_FOLLOWED {
        let current = match join_in(state, &generation, record, preferred).await? {
            Joined::Answer(answer) => return Ok(answer),
            Joined::Elsewhere(current) => current,
        };
        let latest = state.generation();
        if Arc::ptr_eq(&latest.routing, &generation.routing)
            && !state.registry.knows(&current.edge_id)
        {
            break;
        }
        // The preferred region by id: its index in the other generation may differ.
        preferred = preferred
            .and_then(|p| generation.routing.region(p))
            .and_then(|r| latest.routing.config.region_index(&r.id));
        (generation, record) = (latest, current);
    }
    Err(edge_reconnecting())
}

/// How many concurrent moves of one room a join follows before answering 503.
const MOVES_FOLLOWED: usize = 4;

fn edge_reconnecting() -> Problem {
    Problem::unavailable("edge-reconnecting", "retry shortly", 1)
}

/// What [`join_in`] found.
enum Joined {
    Answer(SessionAnswer),
    /// The room is on an edge the generation does not have (moved by a concurrent join).
    Elsewhere(SessionRecord),
}

/// [`join_existing`] within one generation.
async fn join_in(
    state: &AppState,
    generation: &Generation,
    record: SessionRecord,
    preferred: Option<RegionIndex>,
) -> Result<Joined, Problem> {
    let (routing, snapshot) = (&generation.routing, &generation.edges);
    let home = snapshot.edge(&record.edge_id);
    let mut move_why = "unavailable";
    if let Some(edge) = home.filter(|e| e.status.serves_existing_sessions()) {
        // A draining edge admits joins only of the sessions it still runs: a room it no
        // longer runs (everyone left) moves now rather than at the drain deadline.
        let left_behind = record.room_key.is_some()
            && edge.status.state() == crate::edge_state::EdgeState::Draining
            && !state
                .store
                .session_running_on_edge(&record.id, &record.edge_id)
                .await
                .map_err(|e| Problem::internal("read the session's state on its edge", &e))?;
        if !left_behind {
            let reason = format!(
                "session lives on edge {} ({})",
                edge.id,
                edge.status.state()
            );
            return Ok(Joined::Answer(session_answer(
                state,
                routing,
                &record,
                edge,
                false,
                AnswerWhy {
                    fallback: false,
                    reason,
                    code: "existing-session",
                },
            )));
        }
        move_why = "draining";
    }
    if home.is_none() && state.started.elapsed() < routing.config.edges.grace_period {
        // Just restarted: the edge has probably not reconnected yet.
        return Err(Problem::unavailable(
            "edge-reconnecting",
            "the session's edge has not reconnected to this locator yet; retry in a few seconds",
            2,
        ));
    }
    if record.room_key.is_none() {
        state
            .store
            .end_session(&record.id, "edge failed", now_ms())
            .await
            .map_err(|e| Problem::internal("end the session", &e))?;
        return Err(session_gone(&record.id));
    }
    // A room: move it to a newly selected edge (compare-and-set: of several concurrent
    // joins, one moves it and the others follow).
    let MovedRoom {
        target,
        chosen,
        moved,
    } = ops::move_room(state, generation, &record, preferred)
        .await
        .map_err(|e| match e {
            MoveError::NoEdge => no_edge_available(),
            MoveError::Store(e) => Problem::internal("move the room", &e),
        })?;
    if moved {
        tracing::info!(session = %record.id, from = %record.edge_id, to = %target.id, why = move_why, "room moved off its edge");
    }
    let current = state
        .store
        .get_session(&record.id)
        .await
        .map_err(|e| Problem::internal("read the session", &e))?
        .ok_or_else(|| session_not_found(&record.id))?;
    let Some(edge) = snapshot.edge(&current.edge_id) else {
        return Ok(Joined::Elsewhere(current));
    };
    let reason = format!(
        "room moved from {move_why} edge {} to {}: {}",
        record.edge_id,
        edge.id,
        chosen.explain(&generation.edges, &generation.routing.config)
    );
    Ok(Joined::Answer(session_answer(
        state,
        routing,
        &current,
        edge,
        false,
        AnswerWhy {
            fallback: chosen.fallback,
            reason,
            code: "room-moved",
        },
    )))
}

fn session_not_found(id: &str) -> Problem {
    Problem::not_found(
        "session-not-found",
        format!("no session {id}: check the id, or start a new session"),
    )
}

fn session_gone(id: &str) -> Problem {
    Problem::new(
        StatusCode::GONE,
        "session-ended",
        "Gone",
        format!("session {id} has ended: start a new session"),
    )
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "client",
    summary = "Where a session lives now, with a fresh join token",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "The session's edge", body = SessionAnswer),
        (status = 404, description = "No such session", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 410, description = "The session has ended", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The edge is reconnecting, or the database cannot be reached", body = crate::openapi::ProblemDoc, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn get_session(
    State(state): State<AppRef>,
    Path(id): Path<String>,
) -> Result<Json<SessionAnswer>, Problem> {
    if id.is_empty() || id.len() > 64 {
        return Err(session_not_found(&id.chars().take(64).collect::<String>()));
    }
    let record = state
        .store
        .get_session(&id)
        .await
        .map_err(|e| Problem::internal("read the session", &e))?
        .ok_or_else(|| session_not_found(&id))?;
    if record.state == SessionState::Ended {
        return Err(session_gone(&id));
    }
    Ok(Json(
        join_existing(&state, &state.generation(), record, None).await?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct ExplainQuery {
    ip: Option<String>,
    region: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DatabaseView {
    path: String,
    database_type: String,
    schema: &'static str,
    build_epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    attribution: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CandidateView {
    edge: String,
    region: String,
    state: &'static str,
    score: f64,
    headroom: f64,
    eligible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    why_not: Option<&'static str>,
    report_age_ms: Option<u64>,
    /// The edge's last load report (`cpu`, `lag_ms`, `connections`, `sessions`…).
    load: Option<locus_protocol::LoadReport>,
    pending_assignments: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ExplainAnswer {
    /// The GeoIP record and the rule that placed the address (as `locator resolve`
    /// prints it).
    geoip: ResolutionView,
    database: Option<DatabaseView>,
    preferred_region: String,
    candidates: Vec<CandidateView>,
    answer: Option<ExplainChoice>,
    /// Why the answer's ICE servers carry another region's relays (or none), if they do.
    turn_fallback: Option<TurnFallback>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ExplainChoice {
    edge: String,
    region: String,
    fallback: bool,
    reason_code: &'static str,
    reason: String,
}

#[utoipa::path(
    get,
    path = "/v1/admin/explain",
    tag = "admin",
    summary = "Why a client address gets the answer it gets",
    params(
        ("ip" = String, Query, description = "The client address to explain"),
        ("region" = Option<String>, Query, description = "Preferred region, as `/v1/locate` takes it"),
    ),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The GeoIP record, the rule, the candidates and the choice", body = ExplainAnswer),
        (status = 400, description = "Bad address or region", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::AdminRefusals,
    )
)]
async fn explain(
    State(state): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<ExplainQuery>,
) -> Result<Json<ExplainAnswer>, Problem> {
    require_admin(&state, peer, &headers, Access::Read).await?;
    let raw = query.ip.unwrap_or_default();
    let ip: IpAddr = raw.trim().parse().map_err(|_| {
        Problem::bad_request(
            "bad-ip",
            format!(
                "`ip` must be an IPv4 or IPv6 address, got \"{}\"",
                raw.chars().take(64).collect::<String>()
            ),
        )
    })?;
    // One generation for the whole answer, even if a reload lands meanwhile.
    let generation = state.generation();
    let (routing, snapshot) = (&generation.routing, &generation.edges);
    let config = &routing.config;
    let resolution = state.geo.resolve_for(&routing.rules, ip);
    let preferred = match query.region.as_deref() {
        Some(id) => config.region_index(id).ok_or_else(|| {
            Problem::bad_request("unknown-region", format!("region \"{id}\" does not exist"))
        })?,
        None => resolution.region,
    };
    let now = tokio::time::Instant::now();
    let candidates = selection::candidates(snapshot, &routing.plan, preferred)
        .into_iter()
        .map(|c| {
            let edge = &snapshot.edges[c.edge];
            let figures = edge.figures();
            CandidateView {
                edge: edge.id.to_string(),
                region: routing.region_id(c.region).to_string(),
                state: c.state.as_str(),
                score: c.score,
                headroom: c.headroom,
                eligible: c.eligible,
                why_not: c.why_not.map(selection::NotEligible::as_str),
                report_age_ms: figures
                    .load
                    .map(|_| edge.report_age(now).as_millis() as u64),
                load: figures.load,
                pending_assignments: figures.pending,
            }
        })
        .collect();
    let answer =
        selection::select_edge(snapshot, &routing.plan, preferred, &mut rand::rng()).map(|s| {
            ExplainChoice {
                edge: snapshot.edges[s.edge].id.to_string(),
                region: routing.region_id(s.region).to_string(),
                fallback: s.fallback,
                reason_code: s.reason.as_str(),
                reason: s.detail(snapshot, config),
            }
        });
    // The relays of the serving region (the preferred one when no edge is available).
    let serving = answer
        .as_ref()
        .and_then(|a| config.region_index(&a.region))
        .unwrap_or(preferred);
    let turn_fallback = routing
        .turn
        .ice_servers_for(serving, 0, String::new)
        .fallback()
        .cloned();
    let database = state.geo.database_info().map(|info| DatabaseView {
        path: info.path.display().to_string(),
        database_type: info.database_type,
        schema: info.schema.as_str(),
        build_epoch: info
            .build_time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        attribution: info.attribution.map(|a| format!("{} <{}>", a.text, a.url)),
    });
    Ok(Json(ExplainAnswer {
        geoip: resolution.view(config),
        database,
        preferred_region: routing.region_id(preferred).to_string(),
        candidates,
        turn_fallback,
        answer,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AdminActionBody {
    /// Who is acting (recorded in the audit log); defaults to `admin`.
    actor: Option<String>,
    /// Drain only: seconds before the edge's rooms move (default: `edges.drain_deadline`).
    #[serde(default, deserialize_with = "whole_number")]
    deadline_secs: Option<u64>,
}

/// An optional whole number ≥ 0. JSON Schema counts `5.0` as an integer, so the document's
/// `integer` promises it is taken; serde's `u64` alone refuses it (schemathesis found it).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
                .map(|f| f as u64)
        })
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a whole number ≥ 0, got {number}"))
        })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AdminActionAnswer {
    edge: String,
    action: String,
    /// False when the edge already was in that state (the call is idempotent).
    changed: bool,
    state: Option<&'static str>,
}

/// `POST /v1/admin/edges/{id}/suspend|resume|drain`: idempotent, audited.
#[utoipa::path(
    post,
    path = "/v1/admin/edges/{id}/{action}",
    tag = "admin",
    summary = "Suspend, resume or drain an edge (idempotent, audited)",
    params(
        ("id" = String, Path, description = "The edge id"),
        ("action" = String, Path, description = "`suspend`, `resume` or `drain`"),
    ),
    request_body(content = Option<AdminActionBody>, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Done (or already so: `changed: false`)", body = AdminActionAnswer),
        (status = 400, description = "Bad body", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::BodyTooLarge,
        (status = 404, description = "No such edge or action", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::AdminRefusals,
    )
)]
async fn admin_edge_action(
    State(state): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((edge_id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<AdminActionAnswer>, Problem> {
    let admin = require_admin(&state, peer, &headers, Access::Write).await?;
    let request: AdminActionBody = optional_object_body(&body, r#"{"actor": "alice"}"#)?;
    // A page session acts under the name given at sign-in; a bearer caller names itself.
    let actor: String = admin
        .actor()
        .or(request.actor.as_deref())
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .unwrap_or("admin")
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let known = ops::edge_known(&state, &edge_id)
        .await
        .map_err(|e| Problem::internal("read the edge", &e))?;
    if !known {
        return Err(Problem::not_found(
            "edge-not-found",
            format!(
                "no edge \"{}\" has ever registered",
                edge_id.chars().take(64).collect::<String>()
            ),
        ));
    }
    let Some(edge_action) = EdgeAction::parse(&action) else {
        return Err(Problem::not_found(
            "no-such-action",
            format!(
                "unknown action \"{}\": use suspend, resume or drain",
                action.chars().take(32).collect::<String>()
            ),
        ));
    };
    let deadline = request.deadline_secs.map(std::time::Duration::from_secs);
    let changed = ops::apply_edge_action(&state, &edge_id, edge_action, &actor, deadline)
        .await
        .map_err(|e| match e {
            ActionError::NotConnected => Problem::unavailable(
                "edge-not-connected",
                format!(
                    "edge {edge_id} is not connected to a locator now: it cannot be told to drain"
                ),
                2,
            ),
            ActionError::Store { doing, error } => Problem::internal(doing, &error),
        })?;
    Ok(Json(AdminActionAnswer {
        state: state
            .registry
            .snapshot()
            .edge(&edge_id)
            .map(|e| e.status.state().as_str()),
        edge: edge_id,
        action,
        changed,
    }))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "The process serves", body = String, content_type = "text/plain")),
)]
async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Readiness {
    ready: bool,
    database: String,
    geoip: String,
    config: String,
    edges_connected: usize,
}

/// What `/readyz` answers; `/metrics` exports its `ready` as `locator_ready`.
/// The last component of a path or database location: `/readyz` answers anyone, and the
/// layout of the operator's disks is nobody else's business (the admin status has it).
fn last_part(location: &str) -> &str {
    location.rsplit('/').next().unwrap_or(location)
}

async fn readiness(state: &AppState) -> Readiness {
    let database = match state.store.ping().await {
        Ok(()) => {
            let info = state.store.describe();
            Ok(format!("{} {}", info.backend, last_part(&info.location)))
        }
        Err(e) => Err(e.to_string()),
    };
    let routing = state.routing();
    let geoip = match (&routing.config.geoip.database, state.geo.database_info()) {
        (locus_geo::config::GeoIpSource::Off, _) => {
            Ok("off (every client to the default region)".to_string())
        }
        (_, Some(info)) => Ok(format!(
            "{} ({})",
            info.database_type,
            last_part(&info.path.to_string_lossy())
        )),
        (_, None) => Err("not loaded".to_string()),
    };
    let snapshot = state.registry.snapshot();
    let ready = database.is_ok() && geoip.is_ok();
    Readiness {
        ready,
        database: database.unwrap_or_else(|e| format!("unreachable: {e}")),
        geoip: geoip.unwrap_or_else(|e| e),
        config: format!(
            "{} ({} regions)",
            last_part(&routing.config.source.to_string_lossy()),
            routing.config.regions.len()
        ),
        edges_connected: snapshot
            .edges
            .iter()
            .filter(|e| e.status.serves_existing_sessions())
            .count(),
    }
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: database, GeoIP, config",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (`ready: false`, with what is wrong)", body = Readiness),
    ),
)]
async fn readyz(State(state): State<AppRef>) -> Response {
    let body = readiness(&state).await;
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (OpenMetrics text)",
    responses((status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")),
)]
async fn metrics(State(state): State<AppRef>) -> Response {
    let ready = readiness(&state).await.ready;
    let regions: Vec<(String, &'static str)> = crate::admin::build_status(&state)
        .regions
        .into_iter()
        .map(|r| (r.id, r.state.as_str()))
        .collect();
    state.metrics.set_health(ready, &regions);
    state.metrics.set_connections(&state.http);
    let text = state.metrics.render(&state.registry.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, finding 12: keys that look like another key, or reorder how it shows.
    #[test]
    fn room_keys_refuse_bidirectional_and_invisible_characters() {
        for bad in [
            "room\u{202E}24",
            "ro\u{200B}om",
            "\u{FEFF}room",
            "a\u{2066}b",
            "",
        ] {
            let problem = validate_key(bad).expect_err(bad);
            assert_eq!(problem.kind, "bad-room-key");
        }
        for good in ["room-42", "équipe café", "会議室", "a b c"] {
            validate_key(good).expect(good);
        }
    }

    #[test]
    fn quoted_client_text_is_shortened() {
        assert_eq!(shortened("eu-west"), "eu-west");
        let long = "x".repeat(10_000);
        let short = shortened(&long);
        assert_eq!(short.chars().count(), 65);
        assert!(short.ends_with('…'));
        assert_eq!(last_part("/var/lib/locus/locator.sqlite"), "locator.sqlite");
        assert_eq!(last_part("db.example:5432/locus"), "locus");
    }

    #[test]
    fn a_bad_create_body_does_not_name_a_rust_type() {
        let error = serde_json::from_str::<CreateSession>("42").expect_err("a number");
        let text = error.to_string();
        assert!(!text.contains("struct"), "{text}");
        assert!(text.contains("optional \"key\""), "{text}");
    }

    use std::path::Path as FsPath;

    use crate::turn::TurnPools;

    const YAML: &str = r#"
default_region: eu-west
regions:
  - id: eu-west
    location: { lat: 53.35, lon: -6.26 }
    turn:
      secret_env: TURN_SECRET_EU_WEST
      ttl: 1h
      servers: ["turn:turn1.eu-west.example.net:3478?transport=udp", "stun:stun.eu-west.example.net"]
  - id: ap-northeast
    location: { lat: 35.68, lon: 139.69 }
    turn:
      servers: ["stun:stun.ap-northeast.example.net:3478"]
"#;

    #[test]
    fn the_locate_answer_is_written_as_serde_would() {
        let config = locus_geo::Config::parse(YAML, FsPath::new("t.yaml")).expect("config");
        let pools = TurnPools::new(&config, |name| {
            (name == "TURN_SECRET_EU_WEST").then(|| "north".to_string())
        });
        let texts = [
            "in eu-west: picked e1 (load 42%), its only edge with headroom",
            "",
            "quote \" backslash \\ newline \n tab \t nul \u{0} unit \u{1f} del \u{7f}",
            "non-ASCII: São Paulo, 東京, emoji 🛰",
        ];
        let mut checked = 0;
        for (text, region) in texts.iter().zip([0, 1, 0, 1].map(RegionIndex::for_tests)) {
            for fallback in [false, true] {
                for rule in [
                    Rule::CidrOverride,
                    Rule::Country,
                    Rule::Continent,
                    Rule::Nearest,
                    Rule::Default,
                ] {
                    for reason in selection::SelectReason::ALL {
                        let answer = LocateAnswer {
                            region: text,
                            rule,
                            fallback,
                            reason: text,
                            reason_code: reason.as_str(),
                            edge: LocatedEdge {
                                id: text,
                                region: "eu-west",
                                url: "https://e1.example.net:8443/a?b=c&d=\"e\"",
                            },
                            ice_servers: pools.ice_servers_for(region, 1_700_000_000, || {
                                "client/+id".to_string()
                            }),
                            turn_fallback: None,
                        };
                        let answer = LocateAnswer {
                            turn_fallback: answer.ice_servers.fallback().cloned(),
                            ..answer
                        };
                        let mut written = Vec::new();
                        answer.write_json(&mut written).expect("write");
                        let expected = serde_json::to_vec(&answer).expect("serialize");
                        assert_eq!(
                            String::from_utf8_lossy(&written),
                            String::from_utf8_lossy(&expected)
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 2 * 5 * 6);
    }
}
