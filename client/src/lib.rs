//! A Rust client for the chat protocol: one connection, concurrent requests matched by
//! request id, server pushes on a channel, and a keep-alive ping.

pub mod admin;
pub mod load;

use chat_protocol::codec::{CodecError, FrameCodec};
use chat_protocol::v1::{
    self, ClientFrame, ErrorCode, ServerFrame, client_frame::Body as Req, server_frame::Body as Resp,
};
use futures::{SinkExt, StreamExt};
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_util::codec::{FramedRead, FramedWrite};

pub use chat_protocol::v1 as proto;

mod files;
pub use files::{hash_file, mime_of, sha256_hex};

/// How long a request waits for its answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or the socket failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The stream could not be framed.
    #[error("framing: {0}")]
    Codec(#[from] CodecError),
    /// The server answered with an error.
    #[error("{}", server_text(*code, message))]
    Server {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// With `RATE_LIMITED` for held-back logins and registrations: how long until
        /// the next attempt may be made, in milliseconds (0: not said).
        retry_after_ms: u64,
    },
    /// The connection closed before the answer came.
    #[error("connection closed")]
    Closed,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// A message text longer than the node accepts (refused before sending).
    #[error("the message is {len} bytes long; the server accepts at most {max}")]
    TooLong {
        /// The text's length in bytes.
        len: usize,
        /// The node's limit (`LoginOk.max_text_bytes`).
        max: usize,
    },
    /// The server answered with something unexpected.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// A server error in words: its message, or what its code means when it has none.
fn server_text(code: ErrorCode, message: &str) -> String {
    if !message.trim().is_empty() {
        return message.to_owned();
    }
    match code {
        ErrorCode::BadRequest => "the server could not read the request",
        ErrorCode::UnsupportedVersion => "this client is too old or too new for the server",
        ErrorCode::NotAuthenticated => "log in first",
        ErrorCode::InvalidCredentials => "wrong username, password or token",
        ErrorCode::UsernameTaken => "that username is taken",
        ErrorCode::InvalidName => "names are 1 to 32 of A-Z a-z 0-9 _ . -",
        ErrorCode::NotFound => "no such user or group",
        ErrorCode::NotAMember => "you are not a member of that group",
        ErrorCode::AlreadyExists => "that group already exists",
        ErrorCode::FrameTooLarge => "the request is larger than the server accepts",
        ErrorCode::RateLimited => "too many requests; try again shortly",
        ErrorCode::Unavailable => "the server cannot serve this right now; try again",
        ErrorCode::Internal => "the server failed; try again",
        ErrorCode::AccountDisabled => "this account is disabled",
        ErrorCode::NotAllowed => "that user does not accept messages from you",
        ErrorCode::Forbidden => "your role in the group does not allow this, or you may not join it",
        ErrorCode::NotAuthor => "only the author may edit or recall that message",
        ErrorCode::EditWindowClosed => "that message is too old to edit",
        ErrorCode::FileTooLarge => "the file is larger than the server takes",
        ErrorCode::HashMismatch => "the file changed while it was sent; send it again",
        ErrorCode::QuotaExceeded => "you have used up your quota of new files",
        ErrorCode::Unexpected | ErrorCode::Unspecified => "the server did not expect this request",
    }
    .to_owned()
}

impl ClientError {
    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// How long the server asks to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Server { retry_after_ms, .. } if *retry_after_ms > 0 => {
                Some(Duration::from_millis(*retry_after_ms))
            }
            _ => None,
        }
    }
}

/// Result alias for client calls.
pub type Result<T> = std::result::Result<T, ClientError>;

/// Something the server sent without being asked.
#[derive(Debug, Clone)]
// Most pushes are deliveries: boxing them would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Push {
    /// A message for this user.
    Delivery(v1::Delivery),
    /// A receipt for a message this user sent.
    Receipt(v1::Receipt),
    /// The server is closing the connection, and why.
    Closing(v1::Closing),
    /// An error not tied to a request (for example a malformed frame).
    Error(v1::Error),
    /// Contacts or group members came online or went offline.
    Presence(v1::PresenceUpdate),
    /// Someone is typing (or stopped).
    Typing(v1::TypingNotice),
}

/// What a client needs to speak TLS: the roots it trusts and, optionally, the name to
/// verify the server against (by default the host part of the address).
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: Option<String>,
}

impl TlsClient {
    /// Trusts the certificates in a PEM file (a CA, or a self-signed server certificate).
    pub fn from_ca_file(path: &std::path::Path, server_name: Option<String>) -> Result<Self> {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| ClientError::Tls(e.to_string()))?;
        }
        let config = tokio_rustls::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Resp>>>>;

/// A connection to a chat node. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Client {
    out: mpsc::Sender<ClientFrame>,
    pending: Pending,
    closed: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
    /// The longest text the node takes (from `LoginOk`; 0 before a login says).
    max_text: Arc<AtomicU64>,
    /// What the server said in HelloOk.
    pub hello: v1::HelloOk,
}

impl Client {
    /// Connects, says Hello, and starts the keep-alive. Pushes arrive on the returned channel.
    pub async fn connect(addr: &str) -> Result<(Self, mpsc::UnboundedReceiver<Push>)> {
        let stream = TcpStream::connect(addr).await?;
        Self::over(stream).await
    }

    /// Says Hello over a connection made by the caller (one bound to a chosen local
    /// address, say), and starts the keep-alive.
    pub async fn over(stream: TcpStream) -> Result<(Self, mpsc::UnboundedReceiver<Push>)> {
        stream.set_nodelay(true)?;
        Self::start(stream).await
    }

    /// Connects over TLS, verifying the server against `tls`'s trusted roots.
    pub async fn connect_tls(addr: &str, tls: &TlsClient) -> Result<(Self, mpsc::UnboundedReceiver<Push>)> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_matches(|c| c == '[' || c == ']');
        let name = tls.server_name.clone().unwrap_or_else(|| host.to_owned());
        let name = ServerName::try_from(name).map_err(|e| ClientError::Tls(e.to_string()))?;
        let stream = tls.connector.connect(name, stream).await?;
        Self::start(stream).await
    }

    /// Tries each address in turn (over TLS if `tls` is given) and returns the first
    /// connection that works.
    pub async fn connect_any_with(
        addrs: &[String],
        tls: Option<&TlsClient>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Push>)> {
        let mut last = ClientError::Unexpected("no server address given".into());
        for addr in addrs {
            let attempt = match tls {
                Some(tls) => Self::connect_tls(addr, tls).await,
                None => Self::connect(addr).await,
            };
            match attempt {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn start<S>(stream: S) -> Result<(Self, mpsc::UnboundedReceiver<Push>)>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let codec = FrameCodec::new(16 * 1024 * 1024);
        let (out_tx, mut out_rx) = mpsc::channel::<ClientFrame>(1024);
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();

        let mut sink = FramedWrite::new(write, codec);
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.feed(frame).await.is_err() {
                    return;
                }
                while let Ok(frame) = out_rx.try_recv() {
                    if sink.feed(frame).await.is_err() {
                        return;
                    }
                }
                if SinkExt::<ClientFrame>::flush(&mut sink).await.is_err() {
                    return;
                }
            }
            // Every Client is gone: close our side so the server ends the session (a split
            // stream is not closed by dropping one half).
            let _ = tokio::io::AsyncWriteExt::shutdown(sink.get_mut()).await;
        });

        let reader_pending = pending.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let reader_closed = closed.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(read, codec);
            while let Some(Ok(bytes)) = frames.next().await {
                let Ok(frame) = ServerFrame::decode(bytes) else {
                    continue;
                };
                let Some(body) = frame.body else { continue };
                if frame.request_id != 0 {
                    if let Some(tx) = reader_pending.lock().expect("lock").remove(&frame.request_id) {
                        let _ = tx.send(body);
                    }
                    continue;
                }
                let push = match body {
                    Resp::Delivery(d) => Push::Delivery(d),
                    Resp::Receipt(r) => Push::Receipt(r),
                    Resp::Closing(c) => Push::Closing(c),
                    Resp::Error(e) => Push::Error(e),
                    Resp::Presence(p) => Push::Presence(p),
                    Resp::Typing(t) => Push::Typing(t),
                    _ => continue,
                };
                let _ = push_tx.send(push);
            }
            // Dropping the senders wakes every waiting request with Closed; the flag
            // stops later requests from waiting for an answer that cannot come.
            reader_closed.store(true, Ordering::SeqCst);
            reader_pending.lock().expect("lock").clear();
        });

        let mut client = Self {
            out: out_tx,
            pending,
            closed,
            next_id: Arc::new(AtomicU64::new(1)),
            timeout: DEFAULT_TIMEOUT,
            max_text: Arc::default(),
            hello: v1::HelloOk::default(),
        };
        let hello = client
            .request(Req::Hello(v1::Hello {
                protocol_version: chat_protocol::PROTOCOL_VERSION,
                client_name: format!("chat-client/{}", env!("CARGO_PKG_VERSION")),
            }))
            .await?;
        client.hello = match hello {
            Resp::HelloOk(h) => h,
            other => return Err(unexpected(other)),
        };
        client.spawn_keepalive();
        Ok((client, push_rx))
    }

    /// Tries each address in turn and returns the first connection that works.
    pub async fn connect_any(addrs: &[String]) -> Result<(Self, mpsc::UnboundedReceiver<Push>)> {
        Self::connect_any_with(addrs, None).await
    }

    /// Pings while the connection is idle. It holds only a weak handle, so dropping the
    /// last `Client` still closes the connection.
    fn spawn_keepalive(&self) {
        let every = Duration::from_millis(u64::from(self.hello.idle_timeout_ms.max(3000)) / 3);
        let weak = self.out.downgrade();
        let (pending, closed, next_id, hello) = (
            self.pending.clone(),
            self.closed.clone(),
            self.next_id.clone(),
            self.hello.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(out) = weak.upgrade() else { return };
                let me = Client {
                    out,
                    pending: pending.clone(),
                    closed: closed.clone(),
                    next_id: next_id.clone(),
                    timeout: DEFAULT_TIMEOUT,
                    max_text: Arc::default(),
                    hello: hello.clone(),
                };
                if me.is_closed() || me.ping(0).await.is_err() {
                    return;
                }
            }
        });
    }

    /// True once the server has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Sends one request and waits for its answer; server errors become `ClientError::Server`.
    pub async fn request(&self, body: Req) -> Result<Resp> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("lock").insert(id, tx);
        if self.closed.load(Ordering::SeqCst) {
            self.pending.lock().expect("lock").remove(&id);
            return Err(ClientError::Closed);
        }
        let frame = ClientFrame {
            request_id: id,
            body: Some(body),
        };
        if self.out.send(frame).await.is_err() {
            self.pending.lock().expect("lock").remove(&id);
            return Err(ClientError::Closed);
        }
        let answer = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                self.pending.lock().expect("lock").remove(&id);
                return Err(ClientError::Timeout(self.timeout));
            }
        };
        match answer {
            Resp::Error(e) => Err(ClientError::Server {
                code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                message: e.message,
                retry_after_ms: e.retry_after_ms,
            }),
            other => Ok(other),
        }
    }

    /// Tells the conversation that this user is typing (or, with `stopped`, stopped).
    /// Never answered: it returns once the frame is handed to the connection.
    pub async fn typing(&self, kind: v1::ConversationKind, conversation: &str, stopped: bool) -> Result<()> {
        let frame = ClientFrame {
            request_id: self.next_id.fetch_add(1, Ordering::Relaxed),
            body: Some(Req::Typing(v1::Typing {
                kind: kind as i32,
                conversation: conversation.into(),
                stopped,
            })),
        };
        self.out.send(frame).await.map_err(|_| ClientError::Closed)
    }

    /// Registers a new account.
    pub async fn register(&self, username: &str, password: &str) -> Result<()> {
        match self
            .request(Req::Register(v1::RegisterRequest {
                username: username.into(),
                password: password.into(),
            }))
            .await?
        {
            Resp::RegisterOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Logs in with a password (the new token's device is unnamed).
    pub async fn login(&self, username: &str, password: &str) -> Result<v1::LoginOk> {
        self.login_device(username, password, "").await
    }

    /// Logs in with a password, naming the device the new token is for (`devices`
    /// lists it; at most 64 bytes).
    pub async fn login_device(&self, username: &str, password: &str, device: &str) -> Result<v1::LoginOk> {
        let credential = v1::login_request::Credential::Password(password.into());
        self.login_with(username, credential, device).await
    }

    /// Logs in with a token from an earlier login (the same device as that login).
    pub async fn login_token(&self, username: &str, token: &str) -> Result<v1::LoginOk> {
        self.login_with(username, v1::login_request::Credential::Token(token.into()), "")
            .await
    }

    async fn login_with(
        &self,
        username: &str,
        credential: v1::login_request::Credential,
        device: &str,
    ) -> Result<v1::LoginOk> {
        match self
            .request(Req::Login(v1::LoginRequest {
                username: username.into(),
                credential: Some(credential),
                device: device.into(),
            }))
            .await?
        {
            Resp::LoginOk(ok) => {
                self.max_text
                    .store(u64::from(ok.max_text_bytes), Ordering::Relaxed);
                Ok(ok)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Logs out (the connection stays open).
    pub async fn logout(&self) -> Result<()> {
        match self
            .request(Req::Logout(v1::LogoutRequest { revoke_token: false }))
            .await?
        {
            Resp::LogoutOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Changes this user's password (the old one is required). The user's other
    /// sessions are closed and their tokens revoked; this session and its token stay.
    pub async fn change_password(&self, old_password: &str, new_password: &str) -> Result<()> {
        let req = Req::ChangePassword(v1::ChangePasswordRequest {
            old_password: old_password.into(),
            new_password: new_password.into(),
        });
        match self.request(req).await? {
            Resp::ChangePasswordOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Revokes every token of this user and closes the user's sessions everywhere;
    /// this one is logged out and stays open for another login.
    pub async fn logout_everywhere(&self) -> Result<()> {
        match self
            .request(Req::LogoutEverywhere(v1::LogoutEverywhereRequest {}))
            .await?
        {
            Resp::LogoutOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// This user's devices (its unexpired tokens), the most recently used first;
    /// `current` marks this session's.
    pub async fn devices(&self) -> Result<v1::DeviceList> {
        match self.request(Req::ListDevices(v1::ListDevices {})).await? {
            Resp::DeviceList(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    /// Logs device `id` (a `devices` id) out: its token is revoked and its sessions
    /// on every node are closed.
    pub async fn logout_device(&self, id: &str) -> Result<()> {
        let req = Req::LogoutDevice(v1::LogoutDevice { id: id.into() });
        match self.request(req).await? {
            Resp::LogoutDeviceOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// This user's sessions on every node that answers; `current` marks this one.
    pub async fn sessions(&self) -> Result<Vec<v1::SessionInfo>> {
        match self.request(Req::ListSessions(v1::ListSessions {})).await? {
            Resp::SessionList(l) => Ok(l.sessions),
            other => Err(unexpected(other)),
        }
    }

    /// Round trip.
    pub async fn ping(&self, nonce: u64) -> Result<v1::Pong> {
        match self.request(Req::Ping(v1::Ping { nonce })).await? {
            Resp::Pong(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// The longest message text the node accepts, once a login has said (else 0).
    pub fn max_text_bytes(&self) -> usize {
        self.max_text.load(Ordering::Relaxed) as usize
    }

    /// Refuses a text longer than the node said it accepts, before anything is sent
    /// (a frame over the node's limit would close the connection).
    fn check_length(&self, text: &str) -> Result<()> {
        let max = self.max_text_bytes();
        if max > 0 && text.len() > max {
            return Err(ClientError::TooLong { len: text.len(), max });
        }
        Ok(())
    }

    /// Sends a private message with a fresh client message id.
    pub async fn send_private(&self, to: &str, text: &str) -> Result<v1::SendAck> {
        self.send_private_with_id(to, &new_client_msg_id(), text).await
    }

    /// Sends a private message with the given client message id (resend = same id).
    pub async fn send_private_with_id(
        &self,
        to: &str,
        client_msg_id: &str,
        text: &str,
    ) -> Result<v1::SendAck> {
        self.send_private_reply(to, client_msg_id, text, "").await
    }

    /// Sends a private message answering message `reply_to` (empty: none).
    pub async fn send_private_reply(
        &self,
        to: &str,
        client_msg_id: &str,
        text: &str,
        reply_to: &str,
    ) -> Result<v1::SendAck> {
        self.check_length(text)?;
        expect_ack(
            self.request(Req::SendPrivate(v1::SendPrivate {
                to: to.into(),
                client_msg_id: client_msg_id.into(),
                text: text.into(),
                reply_to: reply_to.into(),
                attachments: Vec::new(),
            }))
            .await?,
        )
    }

    /// Sends a group message with a fresh client message id.
    pub async fn send_group(&self, group: &str, text: &str) -> Result<v1::SendAck> {
        self.send_group_with_id(group, &new_client_msg_id(), text).await
    }

    /// Sends a group message with the given client message id.
    pub async fn send_group_with_id(
        &self,
        group: &str,
        client_msg_id: &str,
        text: &str,
    ) -> Result<v1::SendAck> {
        self.send_group_reply(group, client_msg_id, text, "").await
    }

    /// Sends a group message answering message `reply_to` (empty: none).
    pub async fn send_group_reply(
        &self,
        group: &str,
        client_msg_id: &str,
        text: &str,
        reply_to: &str,
    ) -> Result<v1::SendAck> {
        self.check_length(text)?;
        expect_ack(
            self.request(Req::SendGroup(v1::SendGroup {
                group: group.into(),
                client_msg_id: client_msg_id.into(),
                text: text.into(),
                reply_to: reply_to.into(),
                attachments: Vec::new(),
            }))
            .await?,
        )
    }

    /// Changes message `message_id`: `kind` EDIT (`text` the new text), RECALL, or
    /// REACT (`text` the emoji, empty to remove it). Resend with the same
    /// `client_msg_id` to retry.
    pub async fn change_message(
        &self,
        client_msg_id: &str,
        kind: v1::message_change::Kind,
        message_id: &str,
        text: &str,
    ) -> Result<v1::SendAck> {
        if kind == v1::message_change::Kind::Edit {
            self.check_length(text)?;
        }
        expect_ack(
            self.request(Req::ChangeMessage(v1::ChangeMessage {
                client_msg_id: client_msg_id.into(),
                change: Some(v1::MessageChange {
                    kind: kind as i32,
                    message_id: message_id.into(),
                    text: text.into(),
                    by: String::new(),
                }),
            }))
            .await?,
        )
    }

    /// Edits an own message (a fresh client message id).
    pub async fn edit(&self, message_id: &str, text: &str) -> Result<v1::SendAck> {
        let kind = v1::message_change::Kind::Edit;
        self.change_message(&new_client_msg_id(), kind, message_id, text)
            .await
    }

    /// Recalls (deletes for everyone) a message.
    pub async fn recall(&self, message_id: &str) -> Result<v1::SendAck> {
        let kind = v1::message_change::Kind::Recall;
        self.change_message(&new_client_msg_id(), kind, message_id, "")
            .await
    }

    /// Reacts to a message with `emoji` (empty: removes the reaction).
    pub async fn react(&self, message_id: &str, emoji: &str) -> Result<v1::SendAck> {
        let kind = v1::message_change::Kind::React;
        self.change_message(&new_client_msg_id(), kind, message_id, emoji)
            .await
    }

    /// Marks everything up to `seq` as delivered.
    pub async fn ack_delivered(&self, seq: u64) -> Result<v1::AckOk> {
        expect_ack_ok(
            self.request(Req::AckDelivered(v1::AckDelivered { up_to_seq: seq }))
                .await?,
        )
    }

    /// Marks everything up to `seq` as read.
    pub async fn ack_read(&self, seq: u64) -> Result<v1::AckOk> {
        expect_ack_ok(self.request(Req::AckRead(v1::AckRead { up_to_seq: seq })).await?)
    }

    /// One page of inbox entries after `after_seq`.
    pub async fn sync(&self, after_seq: u64, limit: u32) -> Result<v1::SyncPage> {
        match self
            .request(Req::Sync(v1::SyncRequest { after_seq, limit }))
            .await?
        {
            Resp::SyncPage(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Every inbox entry after `after_seq`, following pages to the end.
    pub async fn sync_all(&self, mut after_seq: u64) -> Result<Vec<v1::Delivery>> {
        let mut all = Vec::new();
        loop {
            let page = self.sync(after_seq, 0).await?;
            let more = page.has_more;
            if let Some(last) = page.messages.last() {
                after_seq = last.seq;
            }
            all.extend(page.messages);
            if !more {
                return Ok(all);
            }
        }
    }

    /// One page of a conversation's history, newest first.
    pub async fn history(
        &self,
        kind: v1::ConversationKind,
        conversation: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<v1::HistoryPage> {
        match self
            .request(Req::History(v1::HistoryRequest {
                kind: kind as i32,
                conversation: conversation.into(),
                before_seq,
                limit,
            }))
            .await?
        {
            Resp::HistoryPage(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// The conversation message `message_id` belongs to, as `me` sees it: the other
    /// user of a private message (`bob`) or the group (`#rust`); `None` when `me` has
    /// no such message. A group message is one `History` page at its seq; a private
    /// one is looked for in the conversation's history (its newest
    /// [`FIND_IN_HISTORY_PAGES`] pages), except one of the earlier `p:me:seq` form,
    /// which is one `Sync` of that seq.
    pub async fn conversation_of(&self, me: &str, message_id: &str) -> Result<Option<String>> {
        let is_message = |d: &v1::Delivery| {
            d.message_id == message_id
                && d.receipt.is_none()
                && d.contact.is_none()
                && d.group_event.is_none()
                && d.change.is_none()
        };
        // The other user of a private message, and whether the message is from `me`.
        let (peer, from_me) = match parse_message_id(message_id) {
            None => return Ok(None),
            Some(MessageHome::Group(group, seq)) => {
                let page = self
                    .history(v1::ConversationKind::Group, group, seq + 1, 1)
                    .await?;
                return Ok(page.messages.iter().any(is_message).then(|| format!("#{group}")));
            }
            Some(MessageHome::Inbox(user, seq)) if user == me => {
                let page = self.sync(seq - 1, 1).await?;
                return Ok(page
                    .messages
                    .iter()
                    .find(|d| d.seq == seq && is_message(d))
                    .map(|d| d.from.clone()));
            }
            Some(MessageHome::Inbox(user, _)) => (user, true),
            Some(MessageHome::Private { to, from, .. }) if to == me => (from, from == me),
            Some(MessageHome::Private { to, from, .. }) if from == me => (to, true),
            Some(MessageHome::Private { .. }) => return Ok(None),
        };
        let mut before = 0;
        for _ in 0..FIND_IN_HISTORY_PAGES {
            let page = self
                .history(v1::ConversationKind::Private, peer, before, 1000)
                .await?;
            if page
                .messages
                .iter()
                .any(|d| is_message(d) && (d.from == me) == from_me)
            {
                return Ok(Some(peer.to_owned()));
            }
            if page.next_before_seq == 0 {
                break;
            }
            before = page.next_before_seq;
        }
        Ok(None)
    }

    /// Creates a public group.
    pub async fn create_group(&self, group: &str) -> Result<()> {
        self.create_group_with(group, false, "").await
    }

    /// Creates a group, private (invitation only) or public, with a title.
    pub async fn create_group_with(&self, group: &str, private: bool, title: &str) -> Result<()> {
        self.group_op(Req::CreateGroup(v1::CreateGroup {
            group: group.into(),
            private,
            title: title.into(),
        }))
        .await
    }

    /// Invites `user` to `group`.
    pub async fn group_invite(&self, group: &str, user: &str) -> Result<()> {
        let (group, user) = (group.into(), user.into());
        self.group_op(Req::GroupInvite(v1::GroupInvite { group, user }))
            .await
    }

    /// Removes member `user` from `group`.
    pub async fn group_remove(&self, group: &str, user: &str) -> Result<()> {
        let (group, user) = (group.into(), user.into());
        self.group_op(Req::GroupRemove(v1::GroupRemove { group, user }))
            .await
    }

    /// Bans `user` from `group`.
    pub async fn group_ban(&self, group: &str, user: &str) -> Result<()> {
        let (group, user) = (group.into(), user.into());
        self.group_op(Req::GroupBan(v1::GroupBan { group, user })).await
    }

    /// Unbans `user`.
    pub async fn group_unban(&self, group: &str, user: &str) -> Result<()> {
        let (group, user) = (group.into(), user.into());
        self.group_op(Req::GroupUnban(v1::GroupUnban { group, user }))
            .await
    }

    /// Owner: makes `user` an admin or a member.
    pub async fn group_set_role(&self, group: &str, user: &str, role: v1::GroupRole) -> Result<()> {
        self.group_op(Req::GroupSetRole(v1::GroupSetRole {
            group: group.into(),
            user: user.into(),
            role: role as i32,
        }))
        .await
    }

    /// Owner: hands `group` over to `user`.
    pub async fn group_transfer(&self, group: &str, user: &str) -> Result<()> {
        let (group, user) = (group.into(), user.into());
        self.group_op(Req::GroupTransfer(v1::GroupTransfer { group, user }))
            .await
    }

    /// Admins: changes what is given of the title, topic and history setting.
    pub async fn group_set_info(&self, info: v1::GroupSetInfo) -> Result<()> {
        self.group_op(Req::GroupSetInfo(info)).await
    }

    /// Owner: deletes `group`.
    pub async fn group_delete(&self, group: &str) -> Result<()> {
        self.group_op(Req::GroupDelete(v1::GroupDelete { group: group.into() }))
            .await
    }

    /// A group's settings and members with roles.
    pub async fn group_info(&self, group: &str) -> Result<v1::GroupInfo> {
        match self
            .request(Req::GroupInfo(v1::GroupInfoRequest { group: group.into() }))
            .await?
        {
            Resp::GroupInfo(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Joins a group.
    pub async fn join_group(&self, group: &str) -> Result<()> {
        self.group_op(Req::JoinGroup(v1::JoinGroup { group: group.into() }))
            .await
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group: &str) -> Result<()> {
        self.group_op(Req::LeaveGroup(v1::LeaveGroup { group: group.into() }))
            .await
    }

    async fn group_op(&self, req: Req) -> Result<()> {
        match self.request(req).await? {
            Resp::GroupOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Where a group message stands for each member it was sent to.
    pub async fn group_receipts(&self, group: &str, group_seq: u64) -> Result<Vec<v1::MemberReceipt>> {
        match self
            .request(Req::GroupReceipts(v1::GroupReceiptsRequest {
                group: group.into(),
                group_seq,
            }))
            .await?
        {
            Resp::GroupReceipts(r) => Ok(r.members),
            other => Err(unexpected(other)),
        }
    }

    /// A group's members.
    pub async fn members(&self, group: &str) -> Result<Vec<String>> {
        match self
            .request(Req::ListMembers(v1::ListMembers { group: group.into() }))
            .await?
        {
            Resp::MemberList(m) => Ok(m.members),
            other => Err(unexpected(other)),
        }
    }

    /// A group's members with their roles.
    pub async fn members_with_roles(&self, group: &str) -> Result<Vec<v1::GroupMember>> {
        match self
            .request(Req::ListMembers(v1::ListMembers { group: group.into() }))
            .await?
        {
            Resp::MemberList(m) => Ok(m.roles),
            other => Err(unexpected(other)),
        }
    }

    /// This user's groups.
    pub async fn my_groups(&self) -> Result<Vec<String>> {
        match self.request(Req::ListMyGroups(v1::ListMyGroups {})).await? {
            Resp::GroupList(g) => Ok(g.groups),
            other => Err(unexpected(other)),
        }
    }

    /// Asks `user` to become a contact (or accepts, if `user` asked first).
    pub async fn contact_request(&self, user: &str) -> Result<v1::ContactState> {
        self.contact_op(Req::ContactRequest(v1::ContactRequest { user: user.into() }))
            .await
    }

    /// Accepts `user`'s contact request.
    pub async fn contact_accept(&self, user: &str) -> Result<v1::ContactState> {
        self.contact_op(Req::ContactAccept(v1::ContactAccept { user: user.into() }))
            .await
    }

    /// Declines `user`'s contact request.
    pub async fn contact_decline(&self, user: &str) -> Result<v1::ContactState> {
        self.contact_op(Req::ContactDecline(v1::ContactDecline { user: user.into() }))
            .await
    }

    /// Removes `user` from the contacts (or withdraws a request to or from `user`).
    pub async fn contact_remove(&self, user: &str) -> Result<v1::ContactState> {
        self.contact_op(Req::ContactRemove(v1::ContactRemove { user: user.into() }))
            .await
    }

    async fn contact_op(&self, req: Req) -> Result<v1::ContactState> {
        match self.request(req).await? {
            Resp::ContactOk(ok) => Ok(ok.state()),
            other => Err(unexpected(other)),
        }
    }

    /// This user's contacts and requests, by name.
    pub async fn contacts(&self) -> Result<Vec<v1::Contact>> {
        match self.request(Req::ListContacts(v1::ListContacts {})).await? {
            Resp::ContactList(l) => Ok(l.contacts),
            other => Err(unexpected(other)),
        }
    }

    /// Blocks (true) or unblocks `user`.
    pub async fn block(&self, user: &str, blocked: bool) -> Result<()> {
        let req = if blocked {
            Req::Block(v1::BlockUser { user: user.into() })
        } else {
            Req::Unblock(v1::UnblockUser { user: user.into() })
        };
        match self.request(req).await? {
            Resp::BlockOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The users this user blocks.
    pub async fn blocks(&self) -> Result<Vec<String>> {
        match self.request(Req::ListBlocks(v1::ListBlocks {})).await? {
            Resp::BlockList(l) => Ok(l.users),
            other => Err(unexpected(other)),
        }
    }

    /// Changes the privacy settings given (`None` keeps one) and returns those in effect.
    pub async fn set_privacy(
        &self,
        contacts_only: Option<bool>,
        hide_last_seen: Option<bool>,
    ) -> Result<v1::Privacy> {
        let req = Req::SetPrivacy(v1::SetPrivacy {
            contacts_only,
            hide_last_seen,
        });
        match self.request(req).await? {
            Resp::Privacy(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Every online user, following pages.
    pub async fn online(&self) -> Result<Vec<String>> {
        let mut users: Vec<String> = Vec::new();
        loop {
            let after = users.last().cloned().unwrap_or_default();
            match self
                .request(Req::ListOnline(v1::ListOnline { after, limit: 0 }))
                .await?
            {
                Resp::OnlineList(page) => {
                    users.extend(page.users);
                    if !page.has_more {
                        return Ok(users);
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }
}

fn expect_ack(resp: Resp) -> Result<v1::SendAck> {
    match resp {
        Resp::SendAck(a) => Ok(a),
        other => Err(unexpected(other)),
    }
}

fn expect_ack_ok(resp: Resp) -> Result<v1::AckOk> {
    match resp {
        Resp::AckOk(a) => Ok(a),
        other => Err(unexpected(other)),
    }
}

fn unexpected(resp: Resp) -> ClientError {
    ClientError::Unexpected(format!("{resp:?}").chars().take(200).collect())
}

/// How many history pages [`Client::conversation_of`] looks through for an own message.
pub const FIND_IN_HISTORY_PAGES: usize = 20;

pub use chat_protocol::ids::{MessageHome, parse_message_id};

/// A random client message id (128 bits, hex).
pub fn new_client_msg_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// One line describing a delivery: `[seq] from -> to: text` (`#group` for group messages).
pub fn format_delivery(d: &v1::Delivery) -> String {
    if let Some(r) = &d.receipt {
        return format!("[{}] receipt: {} {:?} by {}", d.seq, r.message_id, r.kind(), r.by);
    }
    if let Some(c) = &d.contact {
        return format!("[{}] {}", d.seq, format_contact_event(c));
    }
    if let Some(e) = &d.group_event {
        let seq = if d.seq == 0 { d.group_seq } else { d.seq };
        return format!("[{seq}] #{}: {}", d.conversation, format_group_event(e));
    }
    let to = if d.kind == v1::ConversationKind::Group as i32 {
        format!("#{}", d.conversation)
    } else {
        d.conversation.clone()
    };
    // Group history entries carry only the group's seq.
    let seq = if d.seq == 0 { d.group_seq } else { d.seq };
    if let Some(c) = &d.change {
        return format!("[{seq}] {} -> {to}: {}", d.from, format_change(c));
    }
    let mut line = format!("[{}] {} -> {}: {}", seq, d.from, to, d.text);
    if d.recalled {
        line = format!("[{seq}] {} -> {to}: (recalled)", d.from);
    } else if d.edited {
        line.push_str(" (edited)");
    }
    if !d.reply_to.is_empty() {
        line.push_str(&format!(" (reply to {})", d.reply_to));
    }
    for r in &d.reactions {
        line.push_str(&format!(" [{} {}]", r.emoji, r.users.join(",")));
    }
    if d.mentioned {
        line.push_str(" (mentions you)");
    }
    if !d.message_id.is_empty() {
        line.push_str(&format!("  id {}", d.message_id));
    }
    // Each file on a line of its own, with what `download` needs.
    for a in &d.attachments {
        line.push_str(&format!("\n    file {}", format_attachment(a)));
    }
    line
}

/// A file in words: `report.pdf (1.2 MB, application/pdf) blob 3f2a...`.
pub fn format_attachment(a: &v1::Attachment) -> String {
    let name = if a.name.is_empty() {
        "(no name)"
    } else {
        a.name.as_str()
    };
    let image = if a.width > 0 {
        format!(", {}x{}", a.width, a.height)
    } else {
        String::new()
    };
    let mime = if a.mime.is_empty() {
        String::new()
    } else {
        format!(", {}", a.mime)
    };
    format!("{name} ({}{mime}{image}) blob {}", format_size(a.size), a.blob_id)
}

/// A size in bytes for people: `512 B`, `1.5 KB`, `25.0 MB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A change of a message in words: `edited p:bob:3: new text`, `recalled p:bob:3`,
/// `reacted 👍 to p:bob:3`, `removed the reaction to p:bob:3`.
pub fn format_change(c: &v1::MessageChange) -> String {
    use v1::message_change::Kind;
    let id = &c.message_id;
    match c.kind() {
        Kind::Edit => format!("edited {id}: {}", c.text),
        Kind::Recall => format!("recalled {id}"),
        Kind::React if c.text.is_empty() => format!("removed the reaction to {id}"),
        Kind::React => format!("reacted {} to {id}", c.text),
        Kind::Unspecified => format!("changed {id}"),
    }
}

/// A contact event in words, as its inbox's owner sees it: `contact: bob asked you`.
pub fn format_contact_event(c: &v1::ContactEvent) -> String {
    let (other, by_other) = (&c.user, c.by == c.user);
    let what = match (c.state(), by_other) {
        (v1::ContactState::Incoming, _) => format!("{other} asked to be your contact"),
        (v1::ContactState::Outgoing, _) => format!("you asked {other} to be your contact"),
        (v1::ContactState::Contact, true) => format!("{other} accepted: you are contacts"),
        (v1::ContactState::Contact, false) => format!("you and {other} are contacts"),
        (v1::ContactState::None, true) => format!("{other} ended your contact or request"),
        (v1::ContactState::None, false) => format!("you ended your contact or request with {other}"),
    };
    format!("contact: {what}")
}

/// A group event in words: `alice invited bob`, `bob joined`, `alice made bob an admin`.
pub fn format_group_event(e: &v1::GroupEvent) -> String {
    use v1::group_event::Kind;
    let (actor, target) = (&e.actor, &e.target);
    match e.kind() {
        Kind::Joined => format!("{actor} joined"),
        Kind::Left => format!("{actor} left"),
        Kind::Invited => format!("{actor} invited {target}"),
        Kind::Removed => format!("{actor} removed {target}"),
        Kind::Banned => format!("{actor} banned {target}"),
        Kind::Unbanned => format!("{actor} unbanned {target}"),
        Kind::RoleChanged if e.role() == v1::GroupRole::Admin => format!("{actor} made {target} an admin"),
        Kind::RoleChanged => format!("{actor} made {target} a member"),
        Kind::OwnerChanged => format!("{actor} handed the group over to {target}"),
        Kind::InfoChanged => {
            let history = if e.history_for_new_members {
                "shown"
            } else {
                "hidden"
            };
            format!(
                "{actor} set the title to {:?}, the topic to {:?}, history for new members {history}",
                e.title, e.topic
            )
        }
        Kind::Unspecified => format!("{actor} changed the group"),
    }
}
