//! A minimal PostgreSQL frontend for one job: streaming a snapshot's binary `COPY … TO STDOUT`
//! into the decoder. sqlx hands COPY data over one message at a time (a stream item, a shared
//! buffer and a lock per row, socket reads of 8 KiB): at 10M rows a side that was a sixth of
//! recon's CPU, on a machine whose cores PostgreSQL's COPY already keeps busy. This connection
//! reads 256 KiB at a time and hands each row's bytes to the decoder straight from its buffer.
//!
//! It is used only where it is plaintext anyway — a unix socket, a loopback address (whatever
//! `sslmode` short of `require`/`verify-*`), or any host with `sslmode=disable` — and with the
//! authentication methods trust, password and SCRAM-SHA-256. Anything else (TLS, md5, GSSAPI, a
//! password only in `~/.pgpass`, a server that refuses) is not an error here: the snapshot is then
//! read through sqlx, as before (src/connect/postgres.rs). The session is started with sqlx's
//! settings (`DateStyle`, `TimeZone`, `client_encoding`, `extra_float_digits`), so values read as
//! text are the same either way.

use std::ops::Range;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::within;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 256 << 10;
/// Protocol version 3.0.
const PROTOCOL: i32 = 196_608;

/// Why the connection could not be used, or how a COPY ended badly.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server's ErrorResponse, worded as sqlx words it.
    #[error("error returned from database: {0}")]
    Server(String),
    #[error("{0}")]
    Protocol(String),
}

fn protocol(message: impl Into<String>) -> WireError {
    WireError::Protocol(message.into())
}

/// Whether a snapshot of this server may be read over [`Wire`]: the connection is plaintext in
/// any case.
pub fn eligible(options: &PgConnectOptions) -> bool {
    match options.get_ssl_mode() {
        PgSslMode::Disable => true,
        PgSslMode::Allow | PgSslMode::Prefer => super::postgres::on_this_machine(options),
        _ => false,
    }
}

/// The password a url carries (`user:password@` or `?password=`), else `PGPASSWORD`.
pub fn password(url: &str) -> Option<String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (head, query) = rest.split_once('?').unwrap_or((rest, ""));
    let from_query = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("password="))
        .and_then(decode);
    let authority = head.split('/').next().unwrap_or_default();
    let from_userinfo = authority
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .and_then(|(_, p)| decode(p));
    from_query
        .or(from_userinfo)
        .or_else(|| std::env::var("PGPASSWORD").ok())
}

enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Socket {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf).await,
            Socket::Unix(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Socket::Tcp(s) => s.write_all(data).await,
            Socket::Unix(s) => s.write_all(data).await,
        }
    }
}

/// One plaintext session, started and authenticated.
pub struct Wire {
    socket: Socket,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limit: Duration,
    /// Reads wait for [`COPY_MARK`] bytes ([`Wire::copy_out`] over TCP).
    marked: bool,
}

/// Bytes a COPY's read of a TCP socket waits for (its receive low-water mark, `SO_RCVLOWAT`):
/// the server sends a tuple per message and the socket had a few KiB whenever the reader woke —
/// 76,000 reads for a 10M-row plan's two sides, each a wake of a thread, an `epoll_wait` and a
/// `recvfrom`, ~18 µs of CPU each all told. Waiting for 128 KiB: ~12,000 reads, a 1M plan's CPU
/// 0.56 → 0.39 s and a 10M plan's 4.96 → 4.12 s (both cores are busy while the sides are read,
/// so this is wall time too; benches/run.sh).
const COPY_MARK: libc::c_int = 128 << 10;

/// How long a read waits for [`COPY_MARK`] bytes before it takes whatever has come: the stream's
/// last bytes, or a server slower than 64 MB/s.
const COPY_MARK_WAIT: Duration = Duration::from_millis(2);

/// Set `tcp`'s receive low-water mark: a read (and the runtime's readiness) waits until `bytes`
/// bytes have come, or the connection ends. Linux also wakes a waiting reader at once when the
/// mark is lowered to what has come (`tcp_set_rcvlowat`).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn receive_mark(tcp: &tokio::net::TcpStream, bytes: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `setsockopt` reads `size_of::<c_int>()` bytes from a pointer to a live `c_int`; the
    // descriptor is the stream's own, open while it is borrowed. (No crate recon depends on sets
    // this option; this is the library's one `unsafe` block.)
    let set = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match set {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Elsewhere reads wake for any bytes, as before.
#[cfg(not(target_os = "linux"))]
fn receive_mark(_: &tokio::net::TcpStream, _: libc::c_int) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Read `tcp`, whose low-water mark is [`COPY_MARK`]: the mark's worth if it comes within
/// [`COPY_MARK_WAIT`], else whatever comes first (the mark lowered to one byte for that read).
async fn marked_read(
    tcp: &mut tokio::net::TcpStream,
    buf: &mut [u8],
    limit: Duration,
) -> std::io::Result<usize> {
    if let Ok(read) = tokio::time::timeout(COPY_MARK_WAIT, tcp.read(buf)).await {
        return read;
    }
    receive_mark(tcp, 1)?;
    let n = within(limit, tcp.read(buf)).await?;
    receive_mark(tcp, COPY_MARK)?;
    Ok(n)
}

/// A frontend message: tag, length, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

impl Wire {
    /// Connect and authenticate as sqlx would for `options`; an error means "use sqlx instead".
    pub async fn connect(
        options: &PgConnectOptions,
        password: Option<&str>,
        limit: Duration,
    ) -> Result<Wire, WireError> {
        let host = options.get_host();
        let port = options.get_port();
        let socket = match options.get_socket() {
            Some(dir) => Some(dir.join(format!(".s.PGSQL.{port}"))),
            None if host.starts_with('/') => {
                Some(std::path::Path::new(host).join(format!(".s.PGSQL.{port}")))
            }
            None => None,
        };
        let socket = match socket {
            Some(path) => Socket::Unix(within(limit, tokio::net::UnixStream::connect(path)).await?),
            None => {
                let host = host.trim_matches(|c| c == '[' || c == ']');
                let tcp = within(limit, tokio::net::TcpStream::connect((host, port))).await?;
                tcp.set_nodelay(true)?;
                Socket::Tcp(tcp)
            }
        };
        let mut wire = Wire {
            socket,
            buf: vec![0; READ_SIZE],
            start: 0,
            end: 0,
            limit,
            marked: false,
        };
        let mut startup = Vec::new();
        startup.extend_from_slice(&PROTOCOL.to_be_bytes());
        let mut params = vec![
            ("user", options.get_username()),
            ("DateStyle", "ISO, MDY"),
            ("client_encoding", "UTF8"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "2"),
        ];
        if let Some(database) = options.get_database() {
            params.push(("database", database));
        }
        if let Some(name) = options.get_application_name() {
            params.push(("application_name", name));
        }
        if let Some(extra) = options.get_options() {
            params.push(("options", extra));
        }
        for (name, value) in params {
            cstr(&mut startup, name);
            cstr(&mut startup, value);
        }
        startup.push(0);
        let mut first = (startup.len() as i32 + 4).to_be_bytes().to_vec();
        first.extend_from_slice(&startup);
        wire.send(&first).await?;
        let mut scram: Option<Scram> = None;
        loop {
            let (tag, body) = wire.next().await?;
            let body = wire.buf[body].to_vec();
            match tag {
                b'R' => {
                    let code = be32(&body, 0)?;
                    let need =
                        || password.ok_or_else(|| protocol("the server asks for a password"));
                    match code {
                        0 => {}
                        3 => {
                            let mut out = Vec::new();
                            cstr(&mut out, need()?);
                            wire.send(&message(b'p', &out)).await?;
                        }
                        10 => {
                            let mechanisms = String::from_utf8_lossy(&body[4..]).to_string();
                            if !mechanisms.split('\0').any(|m| m == "SCRAM-SHA-256") {
                                return Err(protocol(format!("SASL mechanisms {mechanisms:?}")));
                            }
                            let password = need()?;
                            if !password.is_ascii() {
                                return Err(protocol("a non-ASCII password (SASLprep)"));
                            }
                            let s = Scram::new(password)?;
                            let first = s.client_first();
                            let mut out = Vec::new();
                            cstr(&mut out, "SCRAM-SHA-256");
                            out.extend_from_slice(&(first.len() as i32).to_be_bytes());
                            out.extend_from_slice(first.as_bytes());
                            wire.send(&message(b'p', &out)).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| protocol("SASL out of order"))?;
                            let server_first = String::from_utf8_lossy(&body[4..]).to_string();
                            let last = s.client_final(&server_first)?;
                            wire.send(&message(b'p', last.as_bytes())).await?;
                        }
                        12 => {
                            let s = scram
                                .as_ref()
                                .ok_or_else(|| protocol("SASL out of order"))?;
                            s.verify(&String::from_utf8_lossy(&body[4..]))?;
                        }
                        other => {
                            return Err(protocol(format!("authentication method {other}")));
                        }
                    }
                }
                b'E' => return Err(WireError::Server(server_message(&body))),
                b'Z' => break,
                // Parameter statuses, BackendKeyData, notices, negotiation of minor versions.
                _ => {}
            }
        }
        Ok(wire)
    }

    async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        within(self.limit, self.socket.write_all(data)).await
    }

    /// The next backend message: its tag and where its body is in the buffer.
    async fn next(&mut self) -> Result<(u8, Range<usize>), WireError> {
        loop {
            if let Some(message) = self.buffered()? {
                return Ok(message);
            }
            self.fill().await?;
        }
    }

    /// The next message when the buffer holds all of it (no await: a COPY takes every whole
    /// row in the buffer before it reads the socket again).
    fn buffered(&mut self) -> Result<Option<(u8, Range<usize>)>, WireError> {
        let have = self.end - self.start;
        if have < 5 {
            return Ok(None);
        }
        let len = be32(&self.buf[self.start + 1..self.start + 5], 0)?;
        if len < 4 {
            return Err(protocol("a message shorter than its header"));
        }
        // PostgreSQL's messages are at most 1 GB.
        let len = len as usize;
        if len > 1 << 30 {
            return Err(protocol("a message longer than PostgreSQL sends"));
        }
        if have < 1 + len {
            return Ok(None);
        }
        let at = self.start;
        self.start += 1 + len;
        Ok(Some((self.buf[at], at + 5..at + 1 + len)))
    }

    /// Read more of the socket, making room for the whole message begun in the buffer.
    async fn fill(&mut self) -> Result<(), WireError> {
        let have = self.end - self.start;
        let want = match have >= 5 {
            true => 1 + be32(&self.buf[self.start + 1..self.start + 5], 0)? as usize,
            false => 5,
        };
        // Room for the whole message, and for a marked read's worth.
        let room = self.buf.len() - self.end;
        let short = self.marked && room < COPY_MARK as usize;
        if self.start + want > self.buf.len() || room == 0 || short {
            self.buf.copy_within(self.start..self.end, 0);
            self.end = have;
            self.start = 0;
            if want > self.buf.len() {
                self.buf.resize(want.next_power_of_two(), 0);
            }
        }
        let (socket, buf) = (&mut self.socket, &mut self.buf[self.end..]);
        let n = match socket {
            Socket::Tcp(tcp) if self.marked => marked_read(tcp, buf, self.limit).await?,
            _ => within(self.limit, socket.read(buf)).await?,
        };
        if n == 0 {
            return Err(WireError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        self.end += n;
        Ok(())
    }

    /// Make each setting with `SELECT set_config($1, $2, false)`, its name and value bound as
    /// parameters (never spliced into SQL), all in one round trip.
    pub async fn set(&mut self, settings: &[(String, String)]) -> Result<(), WireError> {
        if settings.is_empty() {
            return Ok(());
        }
        let mut parse = Vec::new();
        cstr(&mut parse, "");
        cstr(&mut parse, "SELECT set_config($1, $2, false)");
        parse.extend_from_slice(&0i16.to_be_bytes());
        let mut out = message(b'P', &parse);
        for (name, value) in settings {
            // Unnamed portal and statement, text parameters, text results.
            let mut bind = Vec::new();
            cstr(&mut bind, "");
            cstr(&mut bind, "");
            bind.extend_from_slice(&0i16.to_be_bytes());
            bind.extend_from_slice(&2i16.to_be_bytes());
            for v in [name, value] {
                bind.extend_from_slice(&(v.len() as i32).to_be_bytes());
                bind.extend_from_slice(v.as_bytes());
            }
            bind.extend_from_slice(&0i16.to_be_bytes());
            out.extend(message(b'B', &bind));
            let mut execute = Vec::new();
            cstr(&mut execute, "");
            execute.extend_from_slice(&0i32.to_be_bytes());
            out.extend(message(b'E', &execute));
        }
        out.extend(message(b'S', &[]));
        self.send(&out).await?;
        let mut failure = None;
        loop {
            let (tag, body) = self.next().await?;
            match tag {
                b'E' => failure = Some(WireError::Server(server_message(&self.buf[body]))),
                b'Z' => break,
                // ParseComplete, BindComplete, the rows, CommandComplete.
                _ => {}
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Run `sql` (one `COPY … TO STDOUT`, after constant settings) up to the start of its data.
    pub async fn start_copy(&mut self, sql: &str) -> Result<(), WireError> {
        let mut out = Vec::new();
        cstr(&mut out, sql);
        self.send(&message(b'Q', &out)).await?;
        let mut failure = None;
        loop {
            let (tag, body) = self.next().await?;
            match tag {
                b'H' if failure.is_none() => return Ok(()),
                b'E' => failure = Some(WireError::Server(server_message(&self.buf[body]))),
                b'Z' => {
                    return Err(
                        failure.unwrap_or_else(|| protocol("the server did not start the COPY"))
                    );
                }
                // Results of the settings, notices.
                _ => {}
            }
        }
    }

    /// Hand the CopyData messages to `each`, in order, up to the end of the COPY, all those of
    /// one read of the socket at once (the buffer, and where each message's bytes are in it);
    /// then close the session.
    pub async fn copy_out(
        mut self,
        mut each: impl FnMut(&[u8], &[Range<usize>]),
    ) -> Result<(), WireError> {
        let mut failure = None;
        let mut frames = Vec::new();
        if let Socket::Tcp(tcp) = &self.socket
            && receive_mark(tcp, COPY_MARK).is_ok()
        {
            self.marked = true;
            let size = self.buf.len().max(4 * COPY_MARK as usize);
            self.buf.resize(size, 0);
        }
        loop {
            let mut done = false;
            while let Some((tag, body)) = self.buffered()? {
                match tag {
                    b'd' => frames.push(body),
                    b'E' => failure = Some(WireError::Server(server_message(&self.buf[body]))),
                    b'Z' => {
                        done = true;
                        break;
                    }
                    // CopyDone, CommandComplete, notices.
                    _ => {}
                }
            }
            if !frames.is_empty() {
                each(&self.buf, &frames);
                frames.clear();
            }
            if done {
                break;
            }
            self.fill().await?;
        }
        let _ = self.send(&message(b'X', &[])).await;
        failure.map_or(Ok(()), Err)
    }
}

fn be32(b: &[u8], at: usize) -> Result<i32, WireError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| protocol("a truncated message"))
}

/// The `M` (message) field of an ErrorResponse.
fn server_message(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"M"))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_else(|| "an error without a message".into())
}

/// SCRAM-SHA-256 without channel binding (RFC 5802, RFC 7677), as libpq does it: the user name
/// in the messages is empty (the server takes the session's).
struct Scram {
    password: String,
    nonce: String,
    user: String,
    auth: Option<(String, [u8; 32])>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

impl Scram {
    fn new(password: &str) -> Result<Scram, WireError> {
        use base64::Engine;
        let mut random = [0u8; 18];
        getrandom::fill(&mut random).map_err(|e| protocol(format!("no random nonce: {e}")))?;
        Ok(Scram::with_nonce(password, "", &b64().encode(random)))
    }

    fn with_nonce(password: &str, user: &str, nonce: &str) -> Scram {
        Scram {
            password: password.to_string(),
            nonce: nonce.to_string(),
            user: user.to_string(),
            auth: None,
        }
    }

    fn first_bare(&self) -> String {
        format!("n={},r={}", self.user, self.nonce)
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare())
    }

    /// The client-final message for the server-first one; keeps what verifies the server.
    fn client_final(&mut self, server_first: &str) -> Result<String, WireError> {
        use base64::Engine;
        let attr = |name: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(name))
                .ok_or_else(|| protocol(format!("SCRAM: no `{name}` from the server")))
        };
        let nonce = attr("r=")?;
        if !nonce.starts_with(&self.nonce) {
            return Err(protocol("SCRAM: the server's nonce does not extend ours"));
        }
        let salt = b64()
            .decode(attr("s=")?)
            .map_err(|e| protocol(format!("SCRAM salt: {e}")))?;
        let rounds: u32 = attr("i=")?
            .parse()
            .map_err(|e| protocol(format!("SCRAM iterations: {e}")))?;
        let mut u = hmac(self.password.as_bytes(), &[&salt, &1u32.to_be_bytes()]);
        let mut salted = u;
        for _ in 1..rounds {
            u = hmac(self.password.as_bytes(), &[&u]);
            salted.iter_mut().zip(u).for_each(|(s, x)| *s ^= x);
        }
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{},{server_first},{without_proof}", self.first_bare());
        let signature = hmac(&stored_key, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.auth = Some((auth, hmac(&salted, &[b"Server Key"])));
        Ok(format!("{without_proof},p={}", b64().encode(proof)))
    }

    /// Check the server's signature: it knows the password too.
    fn verify(&self, server_final: &str) -> Result<(), WireError> {
        use base64::Engine;
        let (auth, server_key) = self
            .auth
            .as_ref()
            .ok_or_else(|| protocol("SCRAM: final message before the challenge"))?;
        let expected = b64().encode(hmac(server_key, &[auth.as_bytes()]));
        match server_final.strip_prefix("v=") {
            Some(v) if v == expected => Ok(()),
            _ => Err(protocol("SCRAM: the server's signature does not match")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A marked read waits for the mark's worth, and takes the stream's last bytes all the same:
    /// without the mark the 10 bytes would be read at once, and without lowering it the read
    /// would wait for the limit and fail. The mark is back for the next read; the end of the
    /// connection ends a read at once.
    #[tokio::test]
    async fn a_marked_read_waits_for_the_mark_then_takes_what_came() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (tcp, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
        let (mut tcp, (mut server, _)) = (tcp.unwrap(), accepted.unwrap());
        receive_mark(&tcp, COPY_MARK).unwrap();
        let mut buf = vec![0; 4 * COPY_MARK as usize];
        let limit = Duration::from_secs(5);
        for round in 0..2u8 {
            server.write_all(&[round; 10]).await.unwrap();
            let began = std::time::Instant::now();
            let n = marked_read(&mut tcp, &mut buf, limit).await.unwrap();
            assert_eq!((n, &buf[..n]), (10, &[round; 10][..]));
            assert!(began.elapsed() >= COPY_MARK_WAIT, "read at once: no mark");
        }
        drop(server);
        assert_eq!(marked_read(&mut tcp, &mut buf, limit).await.unwrap(), 0);
    }

    #[test]
    fn scram_follows_the_rfc_7677_example() {
        let mut s = Scram::with_nonce("pencil", "user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(s.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let last = s
            .client_final("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            last,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        s.verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(s.verify("v=AAAA").is_err());
        assert!(
            Scram::with_nonce("pencil", "", "abc")
                .client_final("r=xyz,s=AAAA,i=1")
                .is_err()
        );
    }

    #[test]
    fn passwords_come_from_the_url_or_the_environment() {
        assert_eq!(
            password("postgres://u:p%40ss@h:5432/db").as_deref(),
            Some("p@ss")
        );
        assert_eq!(
            password("postgres://u@h/db?sslmode=disable&password=s%2Fecret").as_deref(),
            Some("s/ecret")
        );
    }

    #[test]
    fn only_connections_that_are_plaintext_anyway() {
        let e = |url: &str| eligible(&super::super::postgres::pg_options(url).unwrap());
        assert!(e("postgres://u@127.0.0.1:5432/db"));
        assert!(e("postgres://u@localhost/db?sslmode=prefer"));
        assert!(e("postgres://u@db.example.com/db?sslmode=disable"));
        assert!(!e("postgres://u@db.example.com/db"));
        assert!(!e("postgres://u@127.0.0.1/db?sslmode=require"));
        assert!(!e("postgres://u@127.0.0.1/db?sslmode=verify-full"));
    }
}
