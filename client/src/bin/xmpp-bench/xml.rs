//! Just enough XML for an XMPP client stream: split the server's byte stream into
//! top-level elements (the stream header, stanzas and nonzas, the stream's end) and
//! build a small tree of each, without allocating for an element over the size limit.
//!
//! It handles what servers such as ejabberd send: an XML declaration, prefixed names,
//! both quote styles, the predefined and numeric entities, comments and CDATA, and
//! whitespace keep-alives between stanzas. It does not resolve namespaces: names are
//! compared as written (`stream:features`), and `xmlns` is an ordinary attribute.

/// The largest top-level element accepted, in bytes (ejabberd's default limit is 256 KiB).
pub const MAX_ELEMENT: usize = 1 << 20;

/// Why the server's stream could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("malformed XML: {0}")]
    Malformed(&'static str),
    #[error("element larger than {MAX_ELEMENT} bytes")]
    TooLarge,
    #[error("closing tag </{found}> does not match <{expected}>")]
    Mismatch { expected: String, found: String },
}

/// An element: its name as written, its attributes in order, and its children.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// A child of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    /// The value of an attribute, unescaped.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child element of that name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// The child elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The text directly inside this element, unescaped and concatenated.
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }
}

/// One thing read from the server's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `<stream:stream ...>`: the header of a (possibly restarted) stream.
    StreamStart(Element),
    /// A complete top-level element: a stanza or a nonza such as `<a/>`.
    Element(Element),
    /// `</stream:stream>`.
    StreamEnd,
}

/// Collects bytes from the socket and hands out complete top-level events.
/// "Not enough bytes yet" is normal: `next` then returns `Ok(None)`.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    pos: usize,
}

impl Framer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Result<Option<Event>, XmlError> {
        loop {
            let rest = &self.buf[self.pos..];
            let Some(start) = rest.iter().position(|b| !b.is_ascii_whitespace()) else {
                self.pos = self.buf.len();
                return Ok(None);
            };
            let s = &rest[start..];
            if s[0] != b'<' {
                return Err(XmlError::Malformed("text between top-level elements"));
            }
            if s.len() < 2 {
                return Ok(None);
            }
            // Declarations, processing instructions and comments between elements are skipped.
            if let Some(skip) = skip_misc(s)? {
                match skip {
                    Some(n) => {
                        self.pos += start + n;
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            if s[1] == b'/' {
                let Some(end) = scan_tag(s) else {
                    return self.incomplete(s.len());
                };
                let name = tag_name(&s[2..end - 1])?;
                if !is_stream(&name) {
                    return Err(XmlError::Malformed("closing tag at the top level"));
                }
                self.pos += start + end;
                return Ok(Some(Event::StreamEnd));
            }
            let Some(end) = scan_tag(s) else {
                return self.incomplete(s.len());
            };
            let (open, self_closing) = parse_open_tag(&s[..end])?;
            if is_stream(&open.name) && !self_closing {
                self.pos += start + end;
                return Ok(Some(Event::StreamStart(open)));
            }
            return match parse_element(s)? {
                Some((element, used)) => {
                    self.pos += start + used;
                    Ok(Some(Event::Element(element)))
                }
                None => self.incomplete(s.len()),
            };
        }
    }

    fn incomplete(&self, pending: usize) -> Result<Option<Event>, XmlError> {
        if pending > MAX_ELEMENT {
            Err(XmlError::TooLarge)
        } else {
            Ok(None)
        }
    }
}

fn is_stream(name: &str) -> bool {
    name == "stream:stream" || name == "stream"
}

/// For `<?...?>`, `<!--...-->` or `<!DOCTYPE...>` at the start of `s`: `Some(Some(len))`
/// when complete, `Some(None)` when more bytes are needed; `None` for anything else.
fn skip_misc(s: &[u8]) -> Result<Option<Option<usize>>, XmlError> {
    let find = |pat: &[u8]| s.windows(pat.len()).position(|w| w == pat).map(|i| i + pat.len());
    if s.starts_with(b"<?") {
        return Ok(Some(find(b"?>")));
    }
    if s.starts_with(b"<!--") {
        return Ok(Some(find(b"-->")));
    }
    if s.starts_with(b"<!") && !s.starts_with(b"<![CDATA[") {
        if b"<!--".starts_with(s) || b"<![CDATA[".starts_with(s) {
            return Ok(Some(None));
        }
        return Err(XmlError::Malformed("DTDs are not allowed in XMPP"));
    }
    Ok(None)
}

/// The length of the tag starting at `s[0] == '<'`, up to and including its `>`,
/// skipping a `>` inside quoted attribute values; `None` if it is not complete yet.
fn scan_tag(s: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in s.iter().enumerate().skip(1) {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return Some(i + 1),
            None => {}
        }
    }
    None
}

fn is_name_end(b: u8) -> bool {
    b.is_ascii_whitespace() || b == b'/' || b == b'>' || b == b'='
}

fn tag_name(s: &[u8]) -> Result<String, XmlError> {
    let end = s.iter().position(|&b| is_name_end(b)).unwrap_or(s.len());
    if end == 0 {
        return Err(XmlError::Malformed("empty tag name"));
    }
    let name = std::str::from_utf8(&s[..end]).map_err(|_| XmlError::Malformed("name is not UTF-8"))?;
    Ok(name.to_string())
}

/// Parses `<name a='1' b="2">` or `<name/>`: the element (without children) and whether
/// it closes itself.
fn parse_open_tag(tag: &[u8]) -> Result<(Element, bool), XmlError> {
    let inner = &tag[1..tag.len() - 1];
    let (inner, self_closing) = match inner.last() {
        Some(b'/') => (&inner[..inner.len() - 1], true),
        _ => (inner, false),
    };
    let name = tag_name(inner)?;
    let mut attrs = Vec::new();
    let mut i = name.len();
    loop {
        while i < inner.len() && inner[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= inner.len() {
            break;
        }
        let key_end = i + inner[i..]
            .iter()
            .position(|&b| is_name_end(b))
            .unwrap_or(inner.len() - i);
        if key_end == i {
            return Err(XmlError::Malformed("bad attribute"));
        }
        let key = std::str::from_utf8(&inner[i..key_end])
            .map_err(|_| XmlError::Malformed("attribute name is not UTF-8"))?;
        i = key_end;
        while i < inner.len() && inner[i].is_ascii_whitespace() {
            i += 1;
        }
        if inner.get(i) != Some(&b'=') {
            return Err(XmlError::Malformed("attribute without a value"));
        }
        i += 1;
        while i < inner.len() && inner[i].is_ascii_whitespace() {
            i += 1;
        }
        let quote = match inner.get(i) {
            Some(&q) if q == b'"' || q == b'\'' => q,
            _ => return Err(XmlError::Malformed("attribute value is not quoted")),
        };
        let start = i + 1;
        let Some(len) = inner[start..].iter().position(|&b| b == quote) else {
            return Err(XmlError::Malformed("unterminated attribute value"));
        };
        attrs.push((key.to_string(), unescape(&inner[start..start + len])?));
        i = start + len + 1;
    }
    Ok((
        Element {
            name,
            attrs,
            children: Vec::new(),
        },
        self_closing,
    ))
}

/// Parses one complete element starting at `s[0] == '<'`: the element and the bytes it
/// used, or `None` if the buffer ends inside it.
fn parse_element(s: &[u8]) -> Result<Option<(Element, usize)>, XmlError> {
    let mut stack: Vec<Element> = Vec::new();
    let mut i = 0;
    loop {
        if i >= s.len() {
            return Ok(None);
        }
        if s[i] != b'<' {
            let end = s[i..].iter().position(|&b| b == b'<').map_or(s.len(), |n| i + n);
            if end == s.len() {
                return Ok(None);
            }
            let text = unescape(&s[i..end])?;
            if let Some(top) = stack.last_mut() {
                top.children.push(Node::Text(text));
            }
            i = end;
            continue;
        }
        let rest = &s[i..];
        if rest.starts_with(b"<![CDATA[") {
            let Some(n) = rest.windows(3).position(|w| w == b"]]>") else {
                return Ok(None);
            };
            let text =
                std::str::from_utf8(&rest[9..n]).map_err(|_| XmlError::Malformed("CDATA is not UTF-8"))?;
            if let Some(top) = stack.last_mut() {
                top.children.push(Node::Text(text.to_string()));
            }
            i += n + 3;
            continue;
        }
        if let Some(skip) = skip_misc(rest)? {
            match skip {
                Some(n) => {
                    i += n;
                    continue;
                }
                None => return Ok(None),
            }
        }
        let Some(len) = scan_tag(rest) else {
            return Ok(None);
        };
        let tag = &rest[..len];
        i += len;
        if tag[1] == b'/' {
            let name = tag_name(&tag[2..len - 1])?;
            let Some(done) = stack.pop() else {
                return Err(XmlError::Malformed("closing tag without an opening one"));
            };
            if done.name != name {
                return Err(XmlError::Mismatch {
                    expected: done.name,
                    found: name,
                });
            }
            match stack.last_mut() {
                Some(parent) => parent.children.push(Node::Element(done)),
                None => return Ok(Some((done, i))),
            }
            continue;
        }
        let (element, self_closing) = parse_open_tag(tag)?;
        if self_closing {
            match stack.last_mut() {
                Some(parent) => parent.children.push(Node::Element(element)),
                None => return Ok(Some((element, i))),
            }
        } else {
            stack.push(element);
        }
    }
}

/// Replaces the predefined and numeric character references.
pub fn unescape(raw: &[u8]) -> Result<String, XmlError> {
    let s = std::str::from_utf8(raw).map_err(|_| XmlError::Malformed("text is not UTF-8"))?;
    if !s.contains('&') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let Some(semi) = rest[amp..].find(';') else {
            return Err(XmlError::Malformed("unterminated entity"));
        };
        let entity = &rest[amp + 1..amp + semi];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or(XmlError::Malformed("unknown entity"))?
            }
        };
        out.push(c);
        rest = &rest[amp + semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Escapes text or an attribute value (either quote style) for writing.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['<', '>', '&', '"', '\'']) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(input: &[u8]) -> Vec<Event> {
        let mut f = Framer::new();
        f.push(input);
        let mut out = Vec::new();
        while let Some(e) = f.next_event().expect("well-formed") {
            out.push(e);
        }
        out
    }

    #[test]
    fn stream_header_and_a_stanza_come_out_as_separate_events() {
        let got = events(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams' id='1' from='localhost' version='1.0'>\
              <message type='chat'><body>hi</body></message>",
        );
        assert_eq!(got.len(), 2);
        let Event::StreamStart(s) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(s.attr("from"), Some("localhost"));
        let Event::Element(m) = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(m.child("body").map(Element::text).as_deref(), Some("hi"));
    }

    #[test]
    fn an_element_split_at_every_byte_comes_out_once_and_whole() {
        let input: &[u8] = b"<message from='a@x/r' to=\"b@x\"><body>1 &lt; 2 &amp;&#x263A;</body><x/></message>  <r xmlns='urn:xmpp:sm:3'/>";
        let mut f = Framer::new();
        let mut out = Vec::new();
        for b in input {
            f.push(std::slice::from_ref(b));
            while let Some(e) = f.next_event().expect("well-formed") {
                out.push(e);
            }
        }
        assert_eq!(out, events(input));
        assert_eq!(out.len(), 2);
        let Event::Element(m) = &out[0] else { panic!() };
        assert_eq!(m.child("body").expect("body").text(), "1 < 2 &\u{263A}");
        assert_eq!(m.attr("to"), Some("b@x"));
    }

    #[test]
    fn a_gt_inside_a_quoted_attribute_does_not_end_the_tag() {
        let got = events(b"<iq id='a>b' type='result'/>");
        let Event::Element(iq) = &got[0] else { panic!() };
        assert_eq!(iq.attr("id"), Some("a>b"));
    }

    #[test]
    fn whitespace_keepalives_comments_and_cdata_are_handled() {
        let got = events(b" \n <!-- hi --><message><body><![CDATA[<raw>]]></body></message>\n\n");
        assert_eq!(got.len(), 1);
        let Event::Element(m) = &got[0] else { panic!() };
        assert_eq!(m.child("body").expect("body").text(), "<raw>");
    }

    #[test]
    fn stream_end_is_reported() {
        assert_eq!(
            events(b"<a xmlns='urn:xmpp:sm:3' h='5'/></stream:stream>")[1],
            Event::StreamEnd
        );
    }

    #[test]
    fn mismatched_closing_tag_is_an_error() {
        let mut f = Framer::new();
        f.push(b"<message><body>x</message>");
        assert!(matches!(f.next_event(), Err(XmlError::Mismatch { .. })));
    }

    #[test]
    fn oversized_element_is_rejected_before_it_completes() {
        let mut f = Framer::new();
        f.push(b"<message><body>");
        f.push(&vec![b'x'; MAX_ELEMENT + 1]);
        assert_eq!(f.next_event(), Err(XmlError::TooLarge));
    }

    #[test]
    fn unknown_entity_is_an_error_and_escape_round_trips() {
        assert!(unescape(b"&nope;").is_err());
        let s = "<a href=\"x\">&'";
        assert_eq!(unescape(escape(s).as_bytes()).expect("valid"), s);
        assert!(matches!(escape("plain"), std::borrow::Cow::Borrowed(_)));
    }
}
