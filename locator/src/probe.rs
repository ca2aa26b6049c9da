//! The `/healthz` probe of an edge whose link is lost: it tells a dead edge (no answer:
//! fail it now) from a cut link (it answers: keep routing joins to it for the grace
//! period).
//!
//! A minimal HTTP/1.1 GET over a TCP stream: one request, one status line, so no HTTP
//! client stack is pulled in for it. For `https://` edges the TLS layer is not spoken:
//! the probe checks that the edge's port accepts connections, which still tells a dead
//! process from a cut link.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// True when the edge at `public_url` answers `GET /healthz` with 200 within `timeout`.
pub async fn healthz(public_url: &str, timeout: Duration) -> bool {
    let Some((host, port, tls)) = authority(public_url) else {
        return false;
    };
    let attempt = async {
        let mut stream = TcpStream::connect((host.as_str(), port)).await.ok()?;
        if tls {
            return Some(true);
        }
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nUser-Agent: locus-locator-probe\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            let n = stream.read(&mut head[read..]).await.ok()?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let status = std::str::from_utf8(&head[..read]).ok()?;
        Some(status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200"))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
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
    async fn a_closed_port_is_unhealthy_and_a_200_is_healthy() {
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
        assert!(healthz(&format!("http://{addr}"), Duration::from_secs(5)).await);
        // Nothing listens there any more.
        assert!(!healthz(&format!("http://{addr}"), Duration::from_secs(5)).await);
    }
}
