//! Simulated users. Each client task runs sessions one after the other: it creates a
//! session (an ad-hoc one, or a keyed room it reuses) from one address, the other
//! participants join from their own addresses (`POST /v1/sessions` with the room key, or
//! `GET /v1/sessions/{id}`), every participant opens its websocket on the edge it was
//! given (`ws_url?token=…`) and waits for the presence that names it, then they exchange
//! rounds of messages (each frame is due to every other participant) and leave with a
//! close frame. A share of sessions has one participant drop its connection and re-join
//! through the locator, as a real client does after a network blip.
//!
//! Every request goes through the trusted proxy (loopback) with the simulated user's
//! address in `X-Forwarded-For`. When a session is disrupted (its websocket closed, moved
//! or silent), a participant re-joins through the locator until the re-join bound: a room
//! must come back (possibly on another edge); an ad-hoc session may come back or end
//! (410), and anything else is a lost session.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::record::{Answer, Join, Op, Recorder, SessionOutcome, reason_class};

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Concurrent client tasks.
    pub clients: usize,
    /// Participants per session, inclusive range (at least 2).
    pub participants: (usize, usize),
    /// Message rounds per session, and the pause between rounds.
    pub rounds: u32,
    pub think: Duration,
    /// Share of sessions that are keyed rooms.
    pub room_share: f64,
    /// Share of sessions in which a participant disconnects and re-joins.
    pub rejoin_share: f64,
    /// How long a disrupted session may take to come back.
    pub rejoin_bound: Duration,
    /// Most locator requests of the whole run.
    pub max_requests: u64,
    /// How long a participant waits for a frame it is due.
    pub read_timeout: Duration,
}

/// A session answer of the locator (the fields a client uses).
#[derive(Debug, Clone, Deserialize)]
pub struct SessionAnswer {
    pub session_id: String,
    #[serde(default)]
    pub created: bool,
    pub region: String,
    pub fallback: bool,
    /// What the report counts (the `reason` text is for people and is not read). Absent
    /// from locators older than `reason_code`.
    #[serde(default)]
    pub reason_code: Option<String>,
    pub edge: EdgeRef,
    pub ws_url: String,
    pub join_token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EdgeRef {
    pub id: String,
}

/// The outcome of one locator request.
#[derive(Debug)]
enum Http {
    Ok(SessionAnswer),
    /// 410: the session has ended.
    Gone,
    Failed {
        retriable: bool,
        retry_after: Option<Duration>,
    },
}

/// Why a session was disrupted.
#[derive(Debug)]
struct Disruption {
    kind: String,
}

impl Disruption {
    fn new(kind: impl Into<String>) -> Disruption {
        Disruption { kind: kind.into() }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Peer {
    ws: Ws,
    pid: String,
    session_id: String,
    /// The participants of the last presence this participant received.
    present: Vec<String>,
}

enum Frame {
    Presence(Vec<String>),
    /// A participant's message, as received.
    Data(String),
}

/// The sender index of a message `session|sender|round` when it belongs to `session` and
/// `round` and names one of the `n` participants.
fn due_from(text: &str, session: &str, round: u32, n: u64) -> Option<usize> {
    let mut parts = text.split('|');
    let (sid, from, r) = (parts.next()?, parts.next()?, parts.next()?);
    let from: usize = from.parse().ok()?;
    (parts.next().is_none()
        && sid == session
        && r.parse::<u32>().ok()? == round
        && (from as u64) < n)
        .then_some(from)
}

/// State shared by every client task.
#[derive(Debug)]
pub struct Clients {
    http: reqwest::Client,
    locators: Vec<String>,
    addresses: Vec<IpAddr>,
    recorder: Arc<Recorder>,
    options: ClientOptions,
    stop: AtomicBool,
    next_locator: AtomicUsize,
    run_id: String,
}

impl Clients {
    pub fn new(
        locators: Vec<String>,
        addresses: Vec<IpAddr>,
        recorder: Arc<Recorder>,
        options: ClientOptions,
        run_id: String,
    ) -> Result<Arc<Clients>, String> {
        if locators.is_empty() {
            return Err("no locator URL".into());
        }
        if addresses.is_empty() {
            return Err("no client addresses".into());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Arc::new(Clients {
            http,
            locators: locators
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            addresses,
            recorder,
            options,
            stop: AtomicBool::new(false),
            next_locator: AtomicUsize::new(0),
            run_id,
        }))
    }

    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Clients finish their current session and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.recorder.requests.load(Ordering::Relaxed) >= self.options.max_requests
    }

    fn address(&self, rng: &mut StdRng) -> IpAddr {
        self.addresses[rng.random_range(0..self.addresses.len())]
    }

    /// One locator request, tried on each replica in turn when one cannot be reached.
    async fn request(
        &self,
        op: Op,
        path: &str,
        post_body: Option<serde_json::Value>,
        ip: IpAddr,
    ) -> Http {
        self.recorder.requests.fetch_add(1, Ordering::Relaxed);
        let n = self.locators.len();
        let first = self.next_locator.fetch_add(1, Ordering::Relaxed);
        for attempt in 0..n {
            let base = &self.locators[(first + attempt) % n];
            let url = format!("{base}{path}");
            let sent = std::time::Instant::now();
            let t_ms = self.recorder.ms_of(sent);
            let request = match &post_body {
                Some(body) => self.http.post(&url).json(body),
                None => self.http.get(&url),
            }
            .header("X-Forwarded-For", ip.to_string());
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    let kind = if e.is_timeout() {
                        "http-timeout"
                    } else if e.is_connect() {
                        "http-connect"
                    } else {
                        "http-io"
                    };
                    self.recorder.error(kind, true);
                    continue;
                }
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = response.bytes().await;
            let latency_us = sent.elapsed().as_micros() as u64;
            let mut answer = Answer {
                t_ms,
                latency_us,
                op,
                status,
                region: None,
                edge: None,
                fallback: false,
                reason: None,
                created: false,
            };
            if !(200..300).contains(&status) {
                self.recorder.answer(answer);
                if status == 410 {
                    self.recorder.error("http-410-session-ended", false);
                    return Http::Gone;
                }
                let retriable = matches!(status, 502..=504 | 429);
                self.recorder.error(format!("http-{status}"), retriable);
                return Http::Failed {
                    retriable,
                    retry_after,
                };
            }
            let parsed = body
                .ok()
                .and_then(|b| serde_json::from_slice::<SessionAnswer>(&b).ok());
            let Some(parsed) = parsed else {
                self.recorder.answer(answer);
                self.recorder.error("bad-answer-body", false);
                return Http::Failed {
                    retriable: false,
                    retry_after: None,
                };
            };
            answer.region = Some(parsed.region.clone());
            answer.edge = Some(parsed.edge.id.clone());
            answer.fallback = parsed.fallback;
            answer.reason = Some(reason_class(parsed.reason_code.as_deref(), parsed.fallback));
            answer.created = parsed.created;
            self.recorder.answer(answer);
            return Http::Ok(parsed);
        }
        Http::Failed {
            retriable: true,
            retry_after: None,
        }
    }

    /// Opens the websocket of `answer` and waits for the presence that names this
    /// participant.
    async fn connect(&self, answer: &SessionAnswer) -> Result<Peer, Disruption> {
        let url = format!("{}?token={}", answer.ws_url, answer.join_token);
        let ws = match timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(url),
        )
        .await
        {
            Err(_) => return Err(Disruption::new("ws-connect-timeout")),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                return Err(Disruption::new(format!(
                    "ws-refused-{}",
                    response.status().as_u16()
                )));
            }
            Ok(Err(_)) => return Err(Disruption::new("ws-connect")),
            Ok(Ok((ws, _))) => ws,
        };
        let mut peer = Peer {
            ws,
            pid: String::new(),
            session_id: answer.session_id.clone(),
            present: Vec::new(),
        };
        let deadline = Instant::now() + self.options.read_timeout;
        loop {
            // The first presence names this participant (`you`).
            let frame = read_frame(&mut peer.ws, deadline, Some(&mut peer.pid)).await?;
            if let Frame::Presence(list) = frame
                && !peer.pid.is_empty()
            {
                peer.present = list;
                break;
            }
        }
        self.recorder.join(Join {
            t_ms: self.recorder.now_ms(),
            session_id: answer.session_id.clone(),
            participant: peer.pid.clone(),
            edge: answer.edge.id.clone(),
            left: false,
        });
        Ok(peer)
    }

    /// Closes a participant's websocket with a close frame and waits (briefly) for the
    /// edge's reply.
    async fn leave(&self, mut peer: Peer) {
        if peer.ws.close(None).await.is_ok() {
            self.recorder.mark_left(&peer.session_id, &peer.pid);
            let _ = timeout(Duration::from_secs(1), async {
                while let Some(Ok(message)) = peer.ws.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// Runs sessions until told to stop.
    pub async fn run_client(self: Arc<Self>, client: usize, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut iteration = 0u64;
        while !self.stopping() {
            self.session_once(client, iteration, &mut rng).await;
            iteration += 1;
        }
    }

    async fn pause_after(&self, failure: &Http) {
        let wait = match failure {
            Http::Failed {
                retry_after: Some(d),
                ..
            } => (*d).min(Duration::from_secs(1)),
            _ => Duration::from_millis(250),
        };
        tokio::time::sleep(wait).await;
    }

    async fn session_once(&self, client: usize, iteration: u64, rng: &mut StdRng) {
        let keyed = rng.random_bool(self.options.room_share.clamp(0.0, 1.0));
        let key = keyed.then(|| format!("{}-c{client}-room{}", self.run_id, iteration % 3));
        let (lo, hi) = self.options.participants;
        let p = rng.random_range(lo.max(2)..=hi.max(lo.max(2)));
        let ips: Vec<IpAddr> = (0..p).map(|_| self.address(rng)).collect();
        let body = match &key {
            Some(key) => serde_json::json!({ "key": key }),
            None => serde_json::json!({}),
        };
        let op = if keyed { Op::Join } else { Op::Create };
        let first = match self
            .request(op, "/v1/sessions", Some(body.clone()), ips[0])
            .await
        {
            Http::Ok(answer) => answer,
            other => {
                self.pause_after(&other).await;
                return;
            }
        };
        let mut outcome = SessionOutcome {
            t_ms: self.recorder.now_ms(),
            session_id: first.session_id.clone(),
            keyed,
            edge: first.edge.id.clone(),
            participants: p,
            ..SessionOutcome::default()
        };
        let mut answers = vec![first];
        for ip in &ips[1..] {
            let answer = if keyed {
                self.request(Op::Join, "/v1/sessions", Some(body.clone()), *ip)
                    .await
            } else {
                let path = format!("/v1/sessions/{}", outcome.session_id);
                self.request(Op::Join, &path, None, *ip).await
            };
            match answer {
                Http::Ok(answer) => answers.push(answer),
                _ => break,
            }
        }
        let mut peers = Vec::new();
        let mut result = Ok(());
        for answer in &answers {
            match self.connect(answer).await {
                Ok(peer) => peers.push(peer),
                Err(d) => {
                    result = Err(d);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self.converse(&mut peers, &mut outcome, ips[0], rng).await;
        }
        match result {
            Ok(()) => {
                for peer in peers {
                    self.leave(peer).await;
                }
            }
            Err(disruption) => {
                let retriable = !disruption.kind.starts_with("ws-refused-40");
                self.recorder.error(disruption.kind.clone(), retriable);
                outcome.disrupted = Some(disruption.kind);
                outcome.disrupted_ms = Some(self.recorder.now_ms());
                drop(peers);
                self.recover(&mut outcome, ips[0]).await;
            }
        }
        self.recorder.session(outcome);
    }

    /// Presence of everyone, message rounds, and the optional disconnect and re-join.
    async fn converse(
        &self,
        peers: &mut Vec<Peer>,
        outcome: &mut SessionOutcome,
        ip: IpAddr,
        rng: &mut StdRng,
    ) -> Result<(), Disruption> {
        let timeout = self.options.read_timeout;
        // Everyone sees everyone before the first message (so every frame is due to all).
        let pids: Vec<String> = peers.iter().map(|p| p.pid.clone()).collect();
        for peer in peers.iter_mut() {
            let deadline = Instant::now() + timeout;
            while !pids.iter().all(|p| peer.present.contains(p)) {
                if let Frame::Presence(list) = read_frame(&mut peer.ws, deadline, None).await? {
                    peer.present = list;
                }
            }
        }
        let n = peers.len() as u64;
        for round in 0..self.options.rounds {
            if round > 0 {
                tokio::time::sleep(self.options.think).await;
            }
            for (i, peer) in peers.iter_mut().enumerate() {
                let text = format!("{}|{i}|{round}", outcome.session_id);
                peer.ws
                    .send(Message::text(text))
                    .await
                    .map_err(|_| Disruption::new("ws-send"))?;
                outcome.sent += 1;
                outcome.expected += n - 1;
            }
            for (me, peer) in peers.iter_mut().enumerate() {
                let deadline = Instant::now() + timeout;
                let mut heard = HashSet::new();
                while (heard.len() as u64) < n - 1 {
                    if let Frame::Data(text) = read_frame(&mut peer.ws, deadline, None).await? {
                        // Due: this session, this round, another participant, once each.
                        match due_from(&text, &outcome.session_id, round, n) {
                            Some(from) if from != me && heard.insert(from) => {
                                outcome.delivered += 1;
                            }
                            _ => outcome.misdelivered += 1,
                        }
                    }
                }
            }
        }
        if peers.len() >= 2 && rng.random_bool(self.options.rejoin_share.clamp(0.0, 1.0)) {
            // Drop the connection without a close frame (a network blip), then come back
            // through the locator with a fresh join token.
            if let Some(gone) = peers.pop() {
                self.recorder.mark_left(&gone.session_id, &gone.pid);
                drop(gone);
            }
            let path = format!("/v1/sessions/{}", outcome.session_id);
            match self.request(Op::Rejoin, &path, None, ip).await {
                Http::Ok(answer) => {
                    let peer = self.connect(&answer).await?;
                    peers.push(peer);
                    outcome.rejoined = true;
                }
                Http::Gone => return Err(Disruption::new("rejoin-gone")),
                Http::Failed { .. } => return Err(Disruption::new("rejoin-failed")),
            }
        }
        Ok(())
    }

    /// After a disruption: re-join through the locator until the bound.
    async fn recover(&self, outcome: &mut SessionOutcome, ip: IpAddr) {
        let deadline = Instant::now() + self.options.rejoin_bound;
        let path = format!("/v1/sessions/{}", outcome.session_id);
        loop {
            if Instant::now() > deadline {
                outcome.lost = true;
                return;
            }
            match self.request(Op::Rejoin, &path, None, ip).await {
                Http::Ok(answer) => match self.connect(&answer).await {
                    Ok(peer) => {
                        outcome.recovered = true;
                        outcome.recovered_ms = Some(self.recorder.now_ms());
                        self.leave(peer).await;
                        return;
                    }
                    Err(d) => {
                        self.recorder.error(d.kind, true);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                },
                Http::Gone => {
                    outcome.ended_by_edge = true;
                    if outcome.keyed {
                        outcome.lost = true;
                    }
                    return;
                }
                Http::Failed {
                    retriable: false, ..
                } => {
                    outcome.lost = true;
                    return;
                }
                failure => {
                    let wait = match failure {
                        Http::Failed {
                            retry_after: Some(d),
                            ..
                        } => d.min(Duration::from_secs(1)),
                        _ => Duration::from_millis(300),
                    };
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// The next frame that matters. Presence frames set `you` when asked; a close, an error
/// or silence until `deadline` is a disruption.
async fn read_frame(
    ws: &mut Ws,
    deadline: Instant,
    mut you: Option<&mut String>,
) -> Result<Frame, Disruption> {
    loop {
        let message = match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(Disruption::new("ws-silent")),
            Ok(None) => return Err(Disruption::new("ws-eof")),
            Ok(Some(Err(_))) => return Err(Disruption::new("ws-error")),
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Text(text) => {
                let text = text.as_str();
                if !text.starts_with("{\"locus\"") {
                    return Ok(Frame::Data(text.to_string()));
                }
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|_| Disruption::new("ws-bad-frame"))?;
                match value["locus"].as_str() {
                    Some("presence") => {
                        if let (Some(you), Some(me)) = (you.as_deref_mut(), value["you"].as_str()) {
                            *you = me.to_string();
                        }
                        let list = value["participants"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|p| p.as_str().map(str::to_string))
                            .collect();
                        return Ok(Frame::Presence(list));
                    }
                    Some("moved") => return Err(Disruption::new("ws-moved")),
                    _ => continue,
                }
            }
            // Participants send text: a binary frame is never due.
            Message::Binary(_) => return Ok(Frame::Data(String::new())),
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                return Err(Disruption::new(format!("ws-close-{code}")));
            }
            _ => continue,
        }
    }
}

/// A burst: `count` ad-hoc session creates, `concurrency` at a time, as fast as the
/// locator answers (no websockets: the figure is how the locator spreads them).
pub async fn burst(clients: Arc<Clients>, count: usize, concurrency: usize, seed: u64) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let clients = clients.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ ((worker as u64 + 1) * 0x9e37_79b9));
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let ip = clients.address(&mut rng);
                let _ = clients
                    .request(Op::Burst, "/v1/sessions", Some(serde_json::json!({})), ip)
                    .await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::due_from;

    #[test]
    fn only_frames_of_this_session_and_round_are_due() {
        assert_eq!(due_from("s1|2|0", "s1", 0, 3), Some(2));
        assert_eq!(due_from("s2|2|0", "s1", 0, 3), None, "another session");
        assert_eq!(due_from("s1|2|1", "s1", 0, 3), None, "another round");
        assert_eq!(due_from("s1|3|0", "s1", 0, 3), None, "no such participant");
        assert_eq!(due_from("s1|1|0|x", "s1", 0, 3), None, "not our format");
        assert_eq!(due_from("", "s1", 0, 3), None);
    }
}
