//! One check of one server, over the network.
//!
//! - `stun:` — a Binding request; success is a Binding success response.
//! - `turn:` / `turns:` — what a client does (RFC 8656): an Allocate without credentials,
//!   answered 401 with REALM and NONCE; the Allocate again with USERNAME, REALM, NONCE and
//!   MESSAGE-INTEGRITY (long-term key), using a credential minted from the pool's secret
//!   exactly as answers mint them; then a Refresh with LIFETIME 0 so nothing stays
//!   allocated. A 438 (stale nonce) is retried once with the new nonce.
//!
//! The transport is the URL's: UDP (`?transport=udp`, the default for `turn:`/`stun:`),
//! with retransmissions (RFC 5389 §7.2.1, starting at 250 ms) until the caller's timeout;
//! TCP (`?transport=tcp`), where STUN messages need no framing (the header carries the
//! length). `turns:`/`stuns:` are TLS over TCP: this build checks that the TCP port
//! accepts connections, not the TLS handshake nor the allocation behind it (the server
//! row says so), as no TLS client is in the dependency tree yet.
//!
//! Messages are encoded and MESSAGE-INTEGRITY/FINGERPRINT computed by `rtc-stun` and
//! `rtc-turn` (webrtc-rs); nothing of STUN is written by hand here. Errors are classified
//! ([`ErrorKind`]) by the operator problem they point at.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rtc_stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use rtc_stun::crypto::RTCCryptoProvider;
use rtc_stun::error_code::ErrorCodeAttribute;
use rtc_stun::fingerprint::FINGERPRINT;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::{
    BINDING_REQUEST, CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter,
    METHOD_ALLOCATE, METHOD_REFRESH, Message, MessageType, Setter, TransactionId,
};
use rtc_stun::textattrs::TextAttribute;
use rtc_turn::proto::PROTO_UDP;
use rtc_turn::proto::lifetime::Lifetime;
use rtc_turn::proto::reqtrans::RequestedTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::{CheckError, CheckResult, ErrorKind};
use crate::turn::{CHECK_ID, CheckTarget};

/// How long the credentials minted for a check live (coturn refuses an expired one).
const CHECK_CREDENTIAL_TTL: Duration = Duration::from_secs(300);

/// First UDP retransmission timeout (RFC 5389 suggests 500 ms on the open Internet; a
/// shorter one suits a check bounded by a timeout of a few seconds).
const FIRST_RTO: Duration = Duration::from_millis(250);

/// What a URL says about how to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub turn: bool,
    pub tls: bool,
    pub tcp: bool,
    pub host: String,
    pub port: u16,
}

/// Reads `turn:host:port?transport=tcp`, `turns:…`, `stun:…`, `stuns:…` (RFC 7064/7065).
pub fn parse_url(url: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = url
        .split_once(':')
        .ok_or_else(|| format!("\"{url}\" has no scheme"))?;
    let (turn, tls) = match scheme {
        "turn" => (true, false),
        "turns" => (true, true),
        "stun" => (false, false),
        "stuns" => (false, true),
        other => return Err(format!("unknown scheme \"{other}\"")),
    };
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut tcp = tls;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair {
            "transport=udp" if !tls => tcp = false,
            "transport=tcp" => tcp = true,
            other => return Err(format!("unsupported URL parameter \"{other}\"")),
        }
    }
    let default_port = if tls { 5349 } else { 3478 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("\"{url}\": unclosed '['"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("\"{url}\": unexpected \"{after}\"")),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("\"{url}\" has no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("\"{url}\": \"{p}\" is not a port"))?,
    };
    Ok(Endpoint {
        turn,
        tls,
        tcp,
        host: host.to_string(),
        port,
    })
}

fn crypto() -> &'static Arc<dyn RTCCryptoProvider> {
    static PROVIDER: OnceLock<Arc<dyn RTCCryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| match rtc_stun::crypto::default_provider() {
        Ok(provider) => provider,
        // The crate is built with its `crypto-ring` feature (its default): always there.
        Err(error) => unreachable!("rtc-stun has a crypto provider: {error}"),
    })
}

fn protocol(what: impl std::fmt::Display) -> CheckError {
    CheckError::new(ErrorKind::Protocol, format!("unexpected answer: {what}"))
}

fn io_error(what: &str, error: std::io::Error) -> CheckError {
    use std::io::ErrorKind as K;
    let kind = match error.kind() {
        K::ConnectionRefused | K::ConnectionReset | K::HostUnreachable | K::NetworkUnreachable => {
            ErrorKind::Unreachable
        }
        K::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Unreachable,
    };
    CheckError::new(kind, format!("unreachable: {what}: {error}"))
}

/// A connection to the server that exchanges STUN messages.
enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Conn {
    async fn open(endpoint: &Endpoint) -> Result<Conn, CheckError> {
        let addr = resolve(endpoint).await?;
        if endpoint.tcp {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| io_error(&format!("TCP connect to {addr}"), e))?;
            let _ = stream.set_nodelay(true);
            Ok(Conn::Tcp(stream))
        } else {
            let local: SocketAddr = if addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(local)
                .await
                .map_err(|e| io_error("UDP bind", e))?;
            // Connected: only the server's datagrams are read, and an ICMP port
            // unreachable surfaces as an error instead of a timeout.
            socket
                .connect(addr)
                .await
                .map_err(|e| io_error(&format!("UDP to {addr}"), e))?;
            Ok(Conn::Udp(socket))
        }
    }

    /// Sends `request` and returns the response with its transaction id.
    async fn exchange(&mut self, request: &Message) -> Result<Message, CheckError> {
        match self {
            Conn::Udp(socket) => {
                let mut rto = FIRST_RTO;
                loop {
                    socket
                        .send(&request.raw)
                        .await
                        .map_err(|e| io_error("UDP send", e))?;
                    match tokio::time::timeout(rto, read_udp(socket, request)).await {
                        Ok(answer) => return answer,
                        // Lost (UDP): send again, waiting twice as long; the caller's
                        // timeout ends the check.
                        Err(_) => rto *= 2,
                    }
                }
            }
            Conn::Tcp(stream) => {
                stream
                    .write_all(&request.raw)
                    .await
                    .map_err(|e| io_error("TCP write", e))?;
                loop {
                    let mut header = [0u8; 20];
                    stream
                        .read_exact(&mut header)
                        .await
                        .map_err(|e| io_error("TCP read", e))?;
                    let length = u16::from_be_bytes([header[2], header[3]]) as usize;
                    let mut raw = Vec::with_capacity(20 + length);
                    raw.extend_from_slice(&header);
                    raw.resize(20 + length, 0);
                    stream
                        .read_exact(&mut raw[20..])
                        .await
                        .map_err(|e| io_error("TCP read", e))?;
                    let mut answer = Message::new();
                    answer.unmarshal_binary(&raw).map_err(protocol)?;
                    if answer.transaction_id == request.transaction_id {
                        return Ok(answer);
                    }
                }
            }
        }
    }
}

async fn read_udp(socket: &UdpSocket, request: &Message) -> Result<Message, CheckError> {
    let mut buffer = vec![0u8; 2048];
    loop {
        let n = socket
            .recv(&mut buffer)
            .await
            .map_err(|e| io_error("UDP receive", e))?;
        let mut answer = Message::new();
        // Something that is not STUN, or another transaction: not our answer.
        if answer.unmarshal_binary(&buffer[..n]).is_ok()
            && answer.transaction_id == request.transaction_id
        {
            return Ok(answer);
        }
    }
}

async fn resolve(endpoint: &Endpoint) -> Result<SocketAddr, CheckError> {
    let mut addrs = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| {
            CheckError::new(
                ErrorKind::Unreachable,
                format!("unreachable: cannot resolve {}: {e}", endpoint.host),
            )
        })?;
    addrs.next().ok_or_else(|| {
        CheckError::new(
            ErrorKind::Unreachable,
            format!("unreachable: {} has no address", endpoint.host),
        )
    })
}

fn build(setters: &[Box<dyn Setter + '_>]) -> Result<Message, CheckError> {
    let mut message = Message::new();
    message.build(setters).map_err(|e| {
        CheckError::new(ErrorKind::Protocol, format!("cannot encode a request: {e}"))
    })?;
    Ok(message)
}

/// The error of an error response, classified.
fn error_response(answer: &Message, what: &str) -> CheckError {
    let mut code = ErrorCodeAttribute::default();
    if code.get_from(answer).is_err() {
        return protocol(format!("{what}: error response without ERROR-CODE"));
    }
    let number = code.code.0;
    let reason = String::from_utf8_lossy(&code.reason).into_owned();
    let (kind, hint) = match number {
        401 | 441 => (
            ErrorKind::Auth,
            "authentication refused: the pool's first secret is not one of the server's static-auth-secret values (or the clocks differ by more than the credential lifetime)",
        ),
        403 => (
            ErrorKind::Forbidden,
            "forbidden: the server refuses this client or peer address (coturn: denied-peer-ip, allowed-peer-ip, no-loopback-peers)",
        ),
        486 | 508 => (
            ErrorKind::Capacity,
            "capacity: allocation quota or relay ports exhausted (coturn: user-quota, total-quota, min-port/max-port)",
        ),
        _ => (ErrorKind::ServerError, "the server refused the request"),
    };
    CheckError::new(kind, format!("{hint} ({what}: {number} {reason})"))
}

/// One check of `target` (credentials minted at `now_unix`). The caller bounds it with
/// `turn.check_timeout`.
pub async fn check(target: &CheckTarget, now_unix: u64) -> CheckResult {
    let endpoint = parse_url(&target.key.url)
        .map_err(|e| CheckError::new(ErrorKind::Protocol, format!("cannot read the URL: {e}")))?;
    if endpoint.tls {
        return tls_port_open(&endpoint).await;
    }
    let mut conn = Conn::open(&endpoint).await?;
    match (&target.minter, endpoint.turn) {
        (Some(minter), true) => {
            let (username, password) = minter.mint(CHECK_ID, now_unix, CHECK_CREDENTIAL_TTL);
            allocate_and_release(&mut conn, &username, &password).await
        }
        _ => binding(&mut conn).await,
    }
}

async fn tls_port_open(endpoint: &Endpoint) -> CheckResult {
    let addr = resolve(endpoint).await?;
    let started = Instant::now();
    TcpStream::connect(addr)
        .await
        .map_err(|e| io_error(&format!("TCP connect to {addr} (TLS port)"), e))?;
    Ok(started.elapsed())
}

async fn binding(conn: &mut Conn) -> CheckResult {
    let request = build(&[
        Box::new(TransactionId::new()),
        Box::new(BINDING_REQUEST),
        Box::new(FINGERPRINT),
    ])?;
    let started = Instant::now();
    let answer = conn.exchange(&request).await?;
    let rtt = started.elapsed();
    match answer.typ.class {
        c if c == CLASS_SUCCESS_RESPONSE => Ok(rtt),
        c if c == CLASS_ERROR_RESPONSE => Err(error_response(&answer, "Binding")),
        _ => Err(protocol(format!("{} to a Binding request", answer.typ))),
    }
}

async fn allocate_and_release(conn: &mut Conn, username: &str, password: &str) -> CheckResult {
    let allocate = MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST);
    let udp = || RequestedTransport {
        protocol: PROTO_UDP,
    };
    // 1. Without credentials: the server answers 401 with its realm and a nonce.
    let request = build(&[
        Box::new(TransactionId::new()),
        Box::new(allocate),
        Box::new(udp()),
        Box::new(FINGERPRINT),
    ])?;
    let started = Instant::now();
    let mut answer = conn.exchange(&request).await?;
    let rtt = started.elapsed();
    if answer.typ.class == CLASS_SUCCESS_RESPONSE {
        // A server without authentication: release what it allocated.
        return refresh_zero(conn, None).await.map(|()| rtt);
    }
    let mut auth: Option<Auth> = None;
    // 2. With credentials (again once after a stale nonce).
    for attempt in 0..2 {
        if answer.typ.class != CLASS_ERROR_RESPONSE {
            return Err(protocol(format!("{} to an Allocate request", answer.typ)));
        }
        let mut code = ErrorCodeAttribute::default();
        let number = code.get_from(&answer).map(|()| code.code.0).ok();
        let challenge = matches!(number, Some(401)) && attempt == 0 || matches!(number, Some(438));
        if !challenge {
            return Err(error_response(&answer, "authenticated Allocate"));
        }
        let realm = TextAttribute::get_from_as(&answer, ATTR_REALM)
            .map_err(|_| protocol("a 401 without REALM"))?;
        let nonce = TextAttribute::get_from_as(&answer, ATTR_NONCE)
            .map_err(|_| protocol("a 401 without NONCE"))?;
        let a = Auth {
            username: username.to_string(),
            realm: realm.text,
            nonce: nonce.text,
            password: password.to_string(),
        };
        let request = build(&[
            Box::new(TransactionId::new()),
            Box::new(allocate),
            Box::new(udp()),
            Box::new(TextAttribute::new(ATTR_USERNAME, a.username.clone())),
            Box::new(TextAttribute::new(ATTR_REALM, a.realm.clone())),
            Box::new(TextAttribute::new(ATTR_NONCE, a.nonce.clone())),
            Box::new(a.integrity()?),
            Box::new(FINGERPRINT),
        ])?;
        answer = conn.exchange(&request).await?;
        auth = Some(a);
        if answer.typ.class == CLASS_SUCCESS_RESPONSE {
            // 3. Release the allocation at once.
            return refresh_zero(conn, auth.as_mut()).await.map(|()| rtt);
        }
    }
    let _ = auth;
    Err(error_response(&answer, "authenticated Allocate"))
}

/// The long-term credential of one allocation.
struct Auth {
    username: String,
    realm: String,
    nonce: String,
    password: String,
}

impl Auth {
    fn integrity(&self) -> Result<MessageIntegrity<'static>, CheckError> {
        MessageIntegrity::new_long_term_integrity_with_provider(
            self.username.clone(),
            self.realm.clone(),
            self.password.clone(),
            crypto().crypto(),
        )
        .map_err(|e| CheckError::new(ErrorKind::Protocol, format!("cannot sign a request: {e}")))
    }
}

/// Refresh with LIFETIME 0: deletes the allocation (RFC 8656 §7).
async fn refresh_zero(conn: &mut Conn, mut auth: Option<&mut Auth>) -> Result<(), CheckError> {
    for _ in 0..2 {
        let request = refresh_request(auth.as_deref())?;
        let answer = conn.exchange(&request).await?;
        if answer.typ.class == CLASS_SUCCESS_RESPONSE {
            return Ok(());
        }
        let mut code = ErrorCodeAttribute::default();
        let stale = code.get_from(&answer).is_ok() && code.code.0 == 438;
        match (stale, auth.as_deref_mut()) {
            (true, Some(a)) => {
                a.nonce = TextAttribute::get_from_as(&answer, ATTR_NONCE)
                    .map_err(|_| protocol("a 438 without NONCE"))?
                    .text;
            }
            _ => return Err(error_response(&answer, "Refresh (lifetime 0)")),
        }
    }
    Err(protocol("the Refresh kept answering 438 (stale nonce)"))
}

/// The Refresh request (the setters are not `Send`: built apart from the awaits).
fn refresh_request(auth: Option<&Auth>) -> Result<Message, CheckError> {
    {
        let mut setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_REFRESH, CLASS_REQUEST)),
            Box::new(Lifetime(Duration::ZERO)),
        ];
        if let Some(a) = auth {
            setters.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                a.username.clone(),
            )));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, a.realm.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, a.nonce.clone())));
            setters.push(Box::new(a.integrity()?));
        }
        setters.push(Box::new(FINGERPRINT));
        build(&setters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_with_their_defaults() {
        let e = |url: &str| parse_url(url).expect(url);
        assert_eq!(
            e("turn:turn1.example.net:3478?transport=udp"),
            Endpoint {
                turn: true,
                tls: false,
                tcp: false,
                host: "turn1.example.net".into(),
                port: 3478
            }
        );
        assert!(e("turn:127.0.0.1:40000?transport=tcp").tcp);
        let s = e("turns:turn1.example.net?transport=tcp");
        assert!(s.tls && s.tcp && s.turn);
        assert_eq!(s.port, 5349);
        let v6 = e("stun:[::1]:3479");
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.turn, v6.tcp),
            ("::1", 3479, false, false)
        );
        assert_eq!(e("stun:stun.example.net").port, 3478);
        for bad in [
            "http://x",
            "turn:",
            "turn:host:0",
            "turn:host:99999",
            "turn:host?transport=sctp",
            "stun:[::1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    /// A UDP "server" that answers nothing: the check keeps retransmitting and the
    /// caller's timeout ends it (paused time: no real waiting).
    #[tokio::test(start_paused = true)]
    async fn a_silent_udp_server_times_out_after_retransmissions() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let target = CheckTarget {
            key: crate::turn::health::ServerKey::new(
                "r",
                &format!("stun:{}", silent.local_addr().expect("addr")),
            ),
            minter: None,
        };
        let result = tokio::time::timeout(Duration::from_secs(2), check(&target, 0)).await;
        assert!(result.is_err(), "a silent server must not answer");
        // It retransmitted: 250 ms, 500 ms, 1 s → 3 or 4 datagrams within 2 s.
        let mut buffer = [0u8; 1500];
        let mut seen = 0;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(1), silent.recv_from(&mut buffer)).await
        {
            seen += 1;
        }
        assert!(seen >= 3, "{seen} datagrams");
    }

    #[tokio::test]
    async fn a_closed_tcp_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let target = CheckTarget {
            key: crate::turn::health::ServerKey::new("r", &format!("turn:{addr}?transport=tcp")),
            minter: None,
        };
        let error = check(&target, 0).await.expect_err("closed port");
        assert_eq!(error.kind, ErrorKind::Unreachable, "{error}");
    }
}
