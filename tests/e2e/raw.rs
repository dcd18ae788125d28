//! HTTP/1.1 by hand over TCP, for what a well-behaved client will not do: declare a
//! body it never sends, stream one past a limit while reading the early answer, stall
//! halfway, or leave a header unfinished.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer as read off the wire.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub body: Value,
}

/// Reads one answer (head, then a `Content-Length` body or up to the close) from
/// `stream`, waiting at most `limit`; `None` when none came in time.
pub async fn read_answer<R: AsyncReadExt + Unpin>(
    stream: &mut R,
    limit: Duration,
) -> Option<RawAnswer> {
    tokio::time::timeout(limit, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let length = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        });
        let mut body = buf[head_end..].to_vec();
        while length.is_none_or(|n| body.len() < n) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        Some(RawAnswer {
            status,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        })
    })
    .await
    .ok()
    .flatten()
}

/// How a body is sent.
pub struct Body<F> {
    /// Its length.
    pub total: u64,
    /// With `Content-Length: total`; else chunked.
    pub declare: bool,
    /// Appends the piece that starts at the given offset (the result is cut at `total`).
    pub fill: F,
    /// A wait before each piece after the first.
    pub pace: Duration,
}

/// `POST path` with `headers` (each `Name: value`) and `body`, sent as it is made
/// while the answer is read: a server may answer before the body is whole. Returns the
/// answer (if one came within `limit`) and the body bytes sent by then.
pub async fn post_streaming<F>(
    addr: &str,
    path: &str,
    headers: &[String],
    body: Body<F>,
    limit: Duration,
) -> (Option<RawAnswer>, u64)
where
    F: Fn(u64, &mut Vec<u8>) + Send + 'static,
{
    let Body {
        total,
        declare,
        fill,
        pace,
    } = body;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if declare {
        head.push_str(&format!("Content-Length: {total}\r\n\r\n"));
    } else {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    }
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let mut at = 0;
        let mut piece = Vec::with_capacity(1 << 20);
        while at < total {
            if at > 0 && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            piece.clear();
            fill(at, &mut piece);
            piece.truncate(usize::try_from(total - at).unwrap_or(usize::MAX));
            if piece.is_empty() {
                // Nothing more to send: hold the body open, as a client that declared
                // more than it sends does.
                std::future::pending::<()>().await;
            }
            if declare {
                writer.write_all(&piece).await?;
            } else {
                writer
                    .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await?;
                writer.write_all(&piece).await?;
                writer.write_all(b"\r\n").await?;
            }
            at += piece.len() as u64;
            counter.store(at, std::sync::atomic::Ordering::Relaxed);
        }
        if !declare {
            writer.write_all(b"0\r\n\r\n").await?;
        }
        // Keep the connection open for the answer.
        Ok::<_, std::io::Error>(writer)
    });
    let answer = read_answer(&mut reader, limit).await;
    writing.abort();
    (answer, sent.load(std::sync::atomic::Ordering::Relaxed))
}
