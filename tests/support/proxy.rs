//! A TCP fault proxy on 127.0.0.1 between recon and a real server: it passes bytes through, or
//! resets or stalls the connection after a number of bytes in one direction, or accepts and
//! never answers. Runs on its own thread and runtime (`scripted::listen`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    Pass,
    /// Close both ends once this many bytes went from the server to recon.
    ResetDownAfter(usize),
    /// Stop passing bytes from the server to recon after this many (the connection stays open).
    StallDownAfter(usize),
    /// Stop passing bytes from recon to the server after this many.
    StallUpAfter(usize),
    /// Accept, and never answer.
    Blackhole,
}

/// Start a proxy to `target` (`host:port`); returns the port it listens on.
pub fn proxy(target: String, fault: Fault) -> u16 {
    let addr = super::scripted::listen(move |client| {
        let target = target.clone();
        async move {
            if let Fault::Blackhole = fault {
                let _held = client;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            let Ok(server) = TcpStream::connect(&target).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let (up, down) = match fault {
                Fault::StallUpAfter(n) => (Some(n), None),
                Fault::StallDownAfter(n) | Fault::ResetDownAfter(n) => (None, Some(n)),
                _ => (None, None),
            };
            let reset = matches!(fault, Fault::ResetDownAfter(_));
            let a = tokio::spawn(pump(cr, sw, up, false));
            let b = tokio::spawn(pump(sr, cw, down, reset));
            let _ = tokio::join!(a, b);
        }
    });
    addr.port()
}

/// Copy `from` to `to`; after `limit` bytes either stop (a stall: hold both ends open) or, with
/// `reset`, close.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    limit: Option<usize>,
    reset: bool,
) {
    let mut sent = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        let allowed = limit.map_or(n, |l| n.min(l.saturating_sub(sent)));
        if allowed > 0 && to.write_all(&buf[..allowed]).await.is_err() {
            return;
        }
        sent += allowed;
        if limit.is_some_and(|l| sent >= l) {
            if reset {
                return; // both halves dropped: the connection closes mid-stream
            }
            // A stall: keep both ends open and pass nothing more.
            let _hold = (from, to);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
    }
}
