//! The XMPP client side the benchmark needs: the stanzas it writes, stream management
//! (XEP-0198) counters, and a connection that registers (XEP-0077), authenticates
//! (SASL PLAIN), binds a resource, opens a session, enables stream management and
//! sends its initial presence, over plain TCP.

use crate::xml::{Element, Event, Framer, escape};
use anyhow::{Context, Result, bail};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const SM: &str = "urn:xmpp:sm:3";

/// How long a login (registration included) may take. One takes milliseconds; logins
/// that once took up to a minute were connects waiting out SYN retransmissions behind a
/// listen backlog of 5 (ejabberd's default; `scripts/bench-vs-ejabberd.sh` sets 1024).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The stream header a client opens (and reopens after SASL) with.
pub fn stream_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xml:lang='en' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        escape(domain)
    )
}

/// A chat message to a bare JID.
pub fn chat_message(to: &str, id: u64, body: &str) -> String {
    format!(
        "<message to='{}' type='chat' id='m{id}'><body>{}</body></message>",
        escape(to),
        escape(body)
    )
}

/// In-band registration of an account (XEP-0077).
pub fn register(user: &str, password: &str) -> String {
    format!(
        "<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>{}</username>\
         <password>{}</password></query></iq>",
        escape(user),
        escape(password)
    )
}

/// SASL PLAIN (RFC 4616): base64 of `\0user\0password`.
pub fn auth_plain(user: &str, password: &str) -> String {
    let mut raw = vec![0u8];
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        base64(&raw)
    )
}

pub fn bind(resource: &str) -> String {
    format!(
        "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>{}</resource></bind></iq>",
        escape(resource)
    )
}

pub const SESSION: &str =
    "<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>";
pub const ENABLE_SM: &str = "<enable xmlns='urn:xmpp:sm:3'/>";
pub const REQUEST_ACK: &str = "<r xmlns='urn:xmpp:sm:3'/>";
pub const PRESENCE: &str = "<presence/>";
pub const STREAM_END: &str = "</stream:stream>";

pub fn ack(h: u32) -> String {
    format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>")
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether an element counts as a stanza for stream management: only these three do
/// (RFC 6120 §8; XEP-0198 §4), not nonzas such as `<r/>`, `<a/>` or SASL elements.
pub fn is_stanza(e: &Element) -> bool {
    matches!(e.name.as_str(), "message" | "presence" | "iq")
}

/// A stream-management nonza from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmNonza {
    /// `<r/>`: the server asks how many of its stanzas we have handled.
    Request,
    /// `<a h='N'/>`: the server has handled N of our stanzas since `<enable/>`.
    Ack(u32),
}

/// Recognises `<r/>` and `<a h=''/>` in the stream-management namespace.
pub fn sm_nonza(e: &Element) -> Result<Option<SmNonza>> {
    if e.attr("xmlns") != Some(SM) {
        return Ok(None);
    }
    match e.name.as_str() {
        "r" => Ok(Some(SmNonza::Request)),
        "a" => {
            let h = e.attr("h").context("<a/> without h")?;
            Ok(Some(SmNonza::Ack(
                h.parse().with_context(|| format!("<a h='{h}'/>"))?,
            )))
        }
        _ => Ok(None),
    }
}

/// Stream-management counters of one stream (XEP-0198). The counters are unsigned 32-bit
/// integers that wrap, so every comparison is a wrapping difference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmCounters {
    /// Stanzas received from the server since `<enable/>`: our `h`.
    pub received: u32,
    /// Stanzas we have sent since `<enable/>`.
    pub sent: u32,
    /// The server's last `h`: how many of those it has handled.
    pub acked: u32,
}

/// The server acknowledged stanzas we never sent (XEP-0198 says to end the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server acknowledged {h} stanzas but only {sent} were sent (last ack {acked})")]
pub struct AckTooHigh {
    pub h: u32,
    pub sent: u32,
    pub acked: u32,
}

impl SmCounters {
    /// Stanzas sent and not yet acknowledged.
    pub fn unacked(&self) -> u32 {
        self.sent.wrapping_sub(self.acked)
    }

    /// Takes the server's `h` and returns how many stanzas it newly acknowledges.
    pub fn on_ack(&mut self, h: u32) -> Result<u32, AckTooHigh> {
        let newly = h.wrapping_sub(self.acked);
        if newly > self.unacked() {
            return Err(AckTooHigh {
                h,
                sent: self.sent,
                acked: self.acked,
            });
        }
        self.acked = h;
        Ok(newly)
    }
}

/// What a connection saw that the caller has to act on.
#[derive(Debug)]
pub enum Incoming {
    /// A stanza (already counted for stream management).
    Stanza(Element),
    /// The server handled this many more of our stanzas.
    Acked(u32),
}

/// How to log in.
#[derive(Debug, Clone)]
pub struct Account {
    pub domain: String,
    pub user: String,
    pub password: String,
    /// Create the account first, by in-band registration; an existing one is fine.
    pub register: bool,
}

/// One client stream. Reading and writing are separate halves so that one task can
/// wait on the socket and on its send timer at once.
#[derive(Debug)]
pub struct Conn {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    framer: Framer,
    buf: Vec<u8>,
    out: String,
    pub sm: SmCounters,
    /// Stanzas that arrived while logging in (after the initial presence), in order:
    /// the presence echo, and messages stored while the user was away.
    pub early: Vec<Element>,
}

impl Conn {
    /// Connects and logs in: after this the session is available, stream management is
    /// on, and everything sent so far (the initial presence) is acknowledged.
    pub async fn login(addr: &str, account: &Account) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mut c = Conn {
            reader,
            writer,
            framer: Framer::new(),
            buf: Vec::with_capacity(8192),
            out: String::new(),
            sm: SmCounters::default(),
            early: Vec::new(),
        };
        let step = async {
            let features = c.open_stream(&account.domain).await?;
            if account.register {
                c.write_now(&register(&account.user, &account.password)).await?;
                let answer = c.next_element().await?;
                let conflict = answer
                    .child("error")
                    .is_some_and(|e| e.child("conflict").is_some());
                if answer.attr("type") != Some("result") && !conflict {
                    bail!("registration of {} refused: {answer:?}", account.user);
                }
            }
            let plain = features
                .child("mechanisms")
                .is_some_and(|m| m.elements().any(|e| e.text() == "PLAIN"));
            if !plain {
                bail!("the server does not offer SASL PLAIN on this port: {features:?}");
            }
            c.write_now(&auth_plain(&account.user, &account.password)).await?;
            let answer = c.next_element().await?;
            if answer.name != "success" {
                bail!("authentication of {} failed: {answer:?}", account.user);
            }
            let features = c.open_stream(&account.domain).await?;
            c.write_now(&bind("bench")).await?;
            expect_result(&c.next_element().await?, "bind")?;
            // RFC 6121 made the session optional; send it only where it is still required.
            let session = features.child("session");
            if session.is_some_and(|s| s.child("optional").is_none()) {
                c.write_now(SESSION).await?;
                expect_result(&c.next_element().await?, "session")?;
            }
            if features.child("sm").is_none() {
                bail!("the server does not offer stream management (XEP-0198)");
            }
            c.write_now(ENABLE_SM).await?;
            let answer = c.next_element().await?;
            if answer.name != "enabled" {
                bail!("stream management refused: {answer:?}");
            }
            c.write_now(PRESENCE).await?;
            c.sm.sent += 1;
            c.write_now(REQUEST_ACK).await?;
            while c.sm.unacked() > 0 {
                if let Incoming::Stanza(e) = c.next_incoming().await? {
                    c.early.push(e);
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(LOGIN_TIMEOUT, step)
            .await
            .with_context(|| format!("login of {} timed out", account.user))??;
        Ok(c)
    }

    async fn open_stream(&mut self, domain: &str) -> Result<Element> {
        self.write_now(&stream_header(domain)).await?;
        loop {
            match self.next_event().await? {
                Event::StreamStart(_) => {}
                Event::Element(e) if e.name == "stream:features" => return Ok(e),
                Event::Element(e) => bail!("expected stream features, got {e:?}"),
                Event::StreamEnd => bail!("the server closed the stream"),
            }
        }
    }

    /// Reads what the socket has into the framer. Cancel-safe, so it can wait in a
    /// `select!` beside a send timer; it never writes.
    pub async fn read_more(&mut self) -> Result<()> {
        self.buf.clear();
        if self.reader.read_buf(&mut self.buf).await? == 0 {
            bail!("the server closed the connection");
        }
        self.framer.push(&self.buf);
        Ok(())
    }

    async fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.framer.next_event()? {
                return Ok(event);
            }
            self.read_more().await?;
        }
    }

    async fn next_element(&mut self) -> Result<Element> {
        match self.next_event().await? {
            Event::Element(e) if e.name == "stream:error" => bail!("stream error: {e:?}"),
            Event::Element(e) => Ok(e),
            other => bail!("unexpected {other:?}"),
        }
    }

    /// The next thing the caller must act on among the bytes already read, if any.
    /// Stanzas are counted for stream management, and the answer to the server's `<r/>`
    /// is queued (sent at the next `flush`).
    pub fn take_incoming(&mut self) -> Result<Option<Incoming>> {
        while let Some(event) = self.framer.next_event()? {
            let e = match event {
                Event::Element(e) if e.name == "stream:error" => bail!("stream error: {e:?}"),
                Event::Element(e) => e,
                other => bail!("unexpected {other:?}"),
            };
            if is_stanza(&e) {
                self.sm.received = self.sm.received.wrapping_add(1);
                return Ok(Some(Incoming::Stanza(e)));
            }
            match sm_nonza(&e)? {
                Some(SmNonza::Request) => {
                    let a = ack(self.sm.received);
                    self.queue_raw(&a);
                }
                Some(SmNonza::Ack(h)) => return Ok(Some(Incoming::Acked(self.sm.on_ack(h)?))),
                None => {}
            }
        }
        Ok(None)
    }

    /// Reads until something the caller must act on, sending queued answers on the way.
    pub async fn next_incoming(&mut self) -> Result<Incoming> {
        loop {
            let got = self.take_incoming()?;
            self.flush().await?;
            if let Some(incoming) = got {
                return Ok(incoming);
            }
            self.read_more().await?;
        }
    }

    /// Keeps the connection answering the server until `go` turns true: a logged-in
    /// connection that leaves an `<r/>` unanswered is closed by the server (ejabberd's
    /// `ack_timeout`, 60 s), so none may wait unread while the others log in. What is
    /// already read is answered first: ejabberd's `<r/>` after the presence echo often
    /// comes in the same read as the `<a/>` that ended the login.
    pub async fn idle_until(&mut self, go: &mut tokio::sync::watch::Receiver<bool>) -> Result<()> {
        loop {
            while self.take_incoming()?.is_some() {}
            self.flush().await?;
            if *go.borrow() {
                return Ok(());
            }
            tokio::select! {
                read = self.read_more() => read?,
                changed = go.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Queues a stanza without sending it yet.
    pub fn queue_stanza(&mut self, stanza: &str) {
        self.out.push_str(stanza);
        self.sm.sent = self.sm.sent.wrapping_add(1);
    }

    /// Queues raw output (a nonza) without sending it yet.
    pub fn queue_raw(&mut self, raw: &str) {
        self.out.push_str(raw);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.writer.write_all(self.out.as_bytes()).await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn write_now(&mut self, raw: &str) -> Result<()> {
        self.queue_raw(raw);
        self.flush().await
    }

    /// Ends the stream politely, so the server drops the session instead of keeping it
    /// for resumption.
    pub async fn close(mut self) -> Result<()> {
        self.write_now(STREAM_END).await?;
        self.writer.shutdown().await?;
        Ok(())
    }
}

fn expect_result(answer: &Element, what: &str) -> Result<()> {
    if answer.name != "iq" || answer.attr("type") != Some("result") {
        bail!("{what} failed: {answer:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::Framer;

    fn parse_all(input: &str) -> Vec<Event> {
        let mut f = Framer::new();
        f.push(input.as_bytes());
        std::iter::from_fn(|| f.next_event().expect("well-formed")).collect()
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn sasl_plain_encodes_nul_user_nul_password() {
        assert_eq!(
            auth_plain("b1", "bench"),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGIxAGJlbmNo</auth>"
        );
    }

    #[test]
    fn a_built_message_parses_back_to_its_body() {
        let body = format!("{:020}{}", 123_456_789u64, "x<&>".repeat(20));
        let Event::Element(m) = &parse_all(&chat_message("b-2@localhost", 7, &body))[0] else {
            panic!()
        };
        assert_eq!(m.attr("to"), Some("b-2@localhost"));
        assert_eq!(m.attr("type"), Some("chat"));
        assert_eq!(m.child("body").expect("body").text(), body);
    }

    #[test]
    fn acks_are_cumulative_and_counted_once() {
        let mut sm = SmCounters {
            sent: 5,
            ..Default::default()
        };
        assert_eq!(sm.on_ack(2), Ok(2));
        assert_eq!(sm.on_ack(2), Ok(0));
        assert_eq!(sm.on_ack(5), Ok(3));
        assert_eq!(sm.unacked(), 0);
    }

    #[test]
    fn acks_wrap_around_at_2_pow_32() {
        let mut sm = SmCounters {
            sent: 3,
            acked: u32::MAX - 1,
            received: 0,
        };
        assert_eq!(sm.unacked(), 5);
        assert_eq!(sm.on_ack(1), Ok(3));
        assert_eq!(sm.unacked(), 2);
    }

    #[test]
    fn an_ack_for_stanzas_never_sent_is_an_error() {
        let mut sm = SmCounters {
            sent: 4,
            acked: 1,
            received: 0,
        };
        assert!(sm.on_ack(5).is_err());
        assert_eq!(sm.acked, 1, "a bad ack changes nothing");
    }

    /// What ejabberd 23.01 writes on its client port, recorded: the stream header, the
    /// features before and after authentication, and a delivery in the middle of acks.
    const EJABBERD_STREAM: &str = "<?xml version='1.0'?><stream:stream id='6417436474186417459' version='1.0' xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' from='localhost' xmlns='jabber:client'><stream:features><register xmlns='http://jabber.org/features/iq-register'/><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>X-OAUTH2</mechanism></mechanisms></stream:features>";

    #[test]
    fn ejabberd_features_offer_plain_and_registration() {
        let events = parse_all(EJABBERD_STREAM);
        let Event::Element(features) = &events[1] else {
            panic!()
        };
        assert_eq!(features.name, "stream:features");
        assert!(features.child("register").is_some());
        let mechanisms: Vec<String> = features
            .child("mechanisms")
            .expect("mechanisms")
            .elements()
            .map(Element::text)
            .collect();
        assert!(mechanisms.iter().any(|m| m == "PLAIN"));
    }

    #[test]
    fn sm_nonzas_are_recognised_and_stanzas_counted() {
        let input = "<r xmlns='urn:xmpp:sm:3'/><a xmlns='urn:xmpp:sm:3' h='42'/><a h='1'/>\
                     <message xml:lang='en' to='b1@localhost/bench' from='b0@localhost/bench' type='chat' id='m3'><body>x</body></message>";
        let els: Vec<Element> = parse_all(input)
            .into_iter()
            .map(|e| match e {
                Event::Element(e) => e,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sm_nonza(&els[0]).expect("valid"), Some(SmNonza::Request));
        assert_eq!(sm_nonza(&els[1]).expect("valid"), Some(SmNonza::Ack(42)));
        assert_eq!(sm_nonza(&els[2]).expect("valid"), None, "no namespace, not ours");
        assert!(!is_stanza(&els[1]) && is_stanza(&els[3]));
    }

    /// A fake server for one login without registration: answers each step of
    /// `Conn::login`, and after the initial presence writes its echo, the ack and its own
    /// `<r/>` in one write. Returns the server's side of the connection.
    async fn fake_login_server(listener: tokio::net::TcpListener) -> TcpStream {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut seen = String::new();
        let header = "<?xml version='1.0'?><stream:stream id='1' version='1.0' \
                      xmlns:stream='http://etherx.jabber.org/streams' from='localhost' \
                      xmlns='jabber:client'>";
        let steps = [
            ("<stream:stream", format!("{header}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>")),
            ("</auth>", "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".to_string()),
            ("<stream:stream", format!("{header}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><sm xmlns='urn:xmpp:sm:3'/></stream:features>")),
            ("</iq>", "<iq type='result' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>u@localhost/bench</jid></bind></iq>".to_string()),
            ("<enable", "<enabled xmlns='urn:xmpp:sm:3'/>".to_string()),
            ("<r xmlns", "<presence from='u@localhost/bench' to='u@localhost/bench'/>\
              <a xmlns='urn:xmpp:sm:3' h='1'/><r xmlns='urn:xmpp:sm:3'/>".to_string()),
        ];
        for (wait_for, answer) in steps {
            read_until(&mut s, &mut seen, wait_for).await;
            s.write_all(answer.as_bytes()).await.expect("write");
        }
        s
    }

    /// Reads until `pattern` has arrived, and forgets everything up to its end.
    async fn read_until(s: &mut TcpStream, seen: &mut String, pattern: &str) {
        loop {
            if let Some(at) = seen.find(pattern) {
                seen.drain(..at + pattern.len());
                return;
            }
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "the client closed before sending {pattern}");
            seen.push_str(std::str::from_utf8(&buf[..n]).expect("utf-8"));
        }
    }

    #[tokio::test]
    async fn a_request_read_with_the_last_login_ack_is_answered_while_idle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(fake_login_server(listener));
        let account = Account {
            domain: "localhost".into(),
            user: "u".into(),
            password: "bench".into(),
            register: false,
        };
        let mut conn = Conn::login(&addr, &account).await.expect("login");
        let mut server = server.await.expect("server");
        let (_go, mut ready) = tokio::sync::watch::channel(false);
        let client = tokio::spawn(async move { conn.idle_until(&mut ready).await });
        // The presence echo is the one stanza the client got: it must answer h='1', and
        // without waiting for more bytes from the server.
        let mut seen = String::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            read_until(&mut server, &mut seen, "<a xmlns='urn:xmpp:sm:3' h='1'/>"),
        )
        .await
        .expect("the buffered <r/> was not answered");
        client.abort();
    }

    #[test]
    fn an_ack_without_a_number_is_an_error() {
        let Event::Element(a) = &parse_all("<a xmlns='urn:xmpp:sm:3' h='x'/>")[0] else {
            panic!()
        };
        assert!(sm_nonza(a).is_err());
    }
}
