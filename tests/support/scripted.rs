//! A scripted HTTP/1.1 server on 127.0.0.1 for fault tests: each request is logged and answered
//! by the test's handler — a full answer, a body that stalls, or a closed connection. It runs on
//! its own thread and runtime (the tests call `recon` synchronously), one connection per request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How to answer one request.
pub enum Reply {
    Json(u16, String),
    /// Status, extra headers, body, content type.
    Full(u16, Vec<(String, String)>, String, &'static str),
    /// Send the head and the first part of the body, then wait this long before the rest.
    Stall(String, Duration),
}

pub type Handler = dyn Fn(usize, &Seen) -> Reply + Send + Sync;

pub struct Scripted {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Listen on a free loopback port and hand each connection to `handle`, on a thread and runtime
/// of their own (the tests call `recon` synchronously); returns the address.
pub fn listen<F, Fut>(handle: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                if let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(handle(socket));
                }
            }
        });
    });
    addr
}

/// Start a server answering with `handler(n, request)` (n counts requests from 0).
pub fn serve(handler: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Scripted {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let handler: Arc<Handler> = Arc::new(handler);
    let addr = listen(move |socket| {
        let (log, handler) = (log.clone(), handler.clone());
        async move {
            let _ = answer(socket, &log, handler.as_ref()).await;
        }
    });
    Scripted {
        url: format!("http://{addr}"),
        seen,
    }
}

async fn answer(
    mut socket: tokio::net::TcpStream,
    log: &Mutex<Vec<Seen>>,
    handler: &Handler,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("slow client"))??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let seen = Seen {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let n = {
        let mut log = log.lock().unwrap();
        log.push(seen.clone());
        log.len() - 1
    };
    let head = |status: u16, extra: &[(String, String)], length: usize, kind: &str| {
        let mut h = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\nConnection: close\r\n"
        );
        for (name, value) in extra {
            h.push_str(&format!("{name}: {value}\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    match handler(n, &seen) {
        Reply::Json(status, body) => {
            let h = head(status, &[], body.len(), "application/json");
            socket.write_all(format!("{h}{body}").as_bytes()).await?;
        }
        Reply::Full(status, extra, body, kind) => {
            let h = head(status, &extra, body.len(), kind);
            socket.write_all(format!("{h}{body}").as_bytes()).await?;
        }
        Reply::Stall(start, wait) => {
            let h = head(200, &[], start.len() + 100, "application/json");
            socket.write_all(format!("{h}{start}").as_bytes()).await?;
            socket.flush().await?;
            tokio::time::sleep(wait).await;
        }
    }
    socket.shutdown().await
}
