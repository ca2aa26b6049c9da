//! The `/healthz` probe of an edge that is suspect or whose link is lost: it tells a dead
//! edge (connection refused or reset: fail it now) from a stalled one (it connects but
//! does not answer: suspect until the longer silence) and from a cut link (it answers:
//! keep routing joins to it for the grace period).
//!
//! A minimal HTTP/1.1 GET over a TCP stream: one request, one status line, so no HTTP
//! client stack is pulled in for it. For `https://` edges the TLS layer is not spoken:
//! the probe checks that the edge's port accepts connections, which still tells a dead
//! process from a cut link.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::edge_state::Probe;

/// Host, port and whether the URL is `https`.
fn authority(url: &str) -> Option<(String, u16, bool)> {
    let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true, 443)
    } else {
        return None;
    };
    let host_port = rest.split('/').next()?;
    if let Some(v6) = host_port.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(default_port), |p| p.parse().ok())?;
        return Some((host.to_string(), port, tls));
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?, tls)),
        None => Some((host_port.to_string(), default_port, tls)),
    }
}

/// Probes `GET /healthz` of the edge at `public_url`, within `timeout`.
///
/// A stopped (SIGSTOP) or overloaded process still has its listening socket, so the
/// kernel completes the TCP handshake and the probe then waits: [`Probe::Unresponsive`].
/// A dead process has none: the connection is refused (or reset) at once,
/// [`Probe::Dead`]. Only a 200 is [`Probe::Healthy`].
pub async fn healthz(public_url: &str, timeout: Duration) -> Probe {
    let Some((host, port, tls)) = authority(public_url) else {
        return Probe::Dead;
    };
    let attempt = async {
        let mut stream = match TcpStream::connect((host.as_str(), port)).await {
            Ok(stream) => stream,
            Err(e) => return refused_or(&e, Probe::Unresponsive),
        };
        if tls {
            return Probe::Healthy;
        }
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nUser-Agent: locus-locator-probe\r\n\r\n"
        );
        if let Err(e) = stream.write_all(request.as_bytes()).await {
            return refused_or(&e, Probe::Unresponsive);
        }
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            match stream.read(&mut head[read..]).await {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) => return refused_or(&e, Probe::Unresponsive),
            }
        }
        match std::str::from_utf8(&head[..read]) {
            Ok(status)
                if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") =>
            {
                Probe::Healthy
            }
            _ => Probe::Unresponsive,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Probe::Unresponsive)
}

/// [`Probe::Dead`] for the errors that mean nothing listens (or the process went away
/// mid-request); `otherwise` for the rest.
fn refused_or(error: &std::io::Error, otherwise: Probe) -> Probe {
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | HostUnreachable
        | NetworkUnreachable | AddrNotAvailable => Probe::Dead,
        _ => otherwise,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            authority("http://127.0.0.1:9001"),
            Some(("127.0.0.1".into(), 9001, false))
        );
        assert_eq!(
            authority("https://edge.example.net/x"),
            Some(("edge.example.net".into(), 443, true))
        );
        assert_eq!(
            authority("http://[::1]:8080/"),
            Some(("::1".into(), 8080, false))
        );
        assert_eq!(authority("ftp://x"), None);
    }

    #[tokio::test]
    async fn a_closed_port_is_dead_a_200_healthy_and_a_silent_port_unresponsive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        });
        let url = format!("http://{addr}");
        assert_eq!(healthz(&url, Duration::from_secs(5)).await, Probe::Healthy);
        // Nothing listens there any more: refused at once, well inside the timeout.
        let started = std::time::Instant::now();
        assert_eq!(healthz(&url, Duration::from_secs(5)).await, Probe::Dead);
        assert!(started.elapsed() < Duration::from_secs(4));

        // A listening socket whose process never reads (as a stopped process's): the
        // kernel accepts the connection, nothing answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", silent.local_addr().expect("addr"));
        assert_eq!(
            healthz(&url, Duration::from_millis(300)).await,
            Probe::Unresponsive
        );
        // An answer that is not a 200 does not prove health.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 503 Busy\r\n\r\n").await;
            }
        });
        assert_eq!(
            healthz(&url, Duration::from_secs(5)).await,
            Probe::Unresponsive
        );
    }
}
