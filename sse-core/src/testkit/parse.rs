//! What a client makes of an event stream: the WHATWG HTML "Server-sent events" parsing and
//! dispatch algorithm, step by step, for bytes that arrive in arbitrary pieces. The reference the
//! encoder is checked against, and the parser of the project's load tool.

/// One event as a spec-following client dispatches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedEvent {
    /// The event type (`message` when the stream named none).
    pub event_type: String,
    /// The data, lines joined with LF.
    pub data: String,
    /// The last event id at the time of dispatch.
    pub last_event_id: String,
}

/// What the parser reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched<'a> {
    /// An event, complete.
    Event(&'a ParsedEvent),
    /// A comment line, without its colon.
    Comment(&'a str),
}

/// An incremental event-stream parser: feed it the stream's bytes as they come.
///
/// ```
/// use sse_core::testkit::{Dispatched, EventStreamParser};
/// let mut parser = EventStreamParser::new();
/// let mut data = Vec::new();
/// for piece in [&b"id: 1\r\nda"[..], b"ta: a\r", b"\ndata: b\n\n"] {
///     parser.feed(piece, |d| if let Dispatched::Event(e) = d { data.push(e.data.clone()) });
/// }
/// assert_eq!(data, ["a\nb"]);
/// ```
#[derive(Debug, Default)]
pub struct EventStreamParser {
    line: Vec<u8>,
    /// The last piece ended with CR: an LF first in the next one ends no other line.
    after_cr: bool,
    /// Whether a line was processed: the first one may start with a BOM, whatever the pieces.
    past_first_line: bool,
    event: ParsedEvent,
    retry: Option<u64>,
}

impl EventStreamParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last `retry:` value accepted, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Feeds the next piece of the stream; reports every event and comment it completes. Only
    /// complete lines count: a line is processed once its CR, LF or CRLF has arrived.
    pub fn feed(&mut self, mut bytes: &[u8], mut on: impl FnMut(Dispatched<'_>)) {
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        while let Some(end) = memchr::memchr2(b'\r', b'\n', bytes) {
            self.line.extend_from_slice(&bytes[..end]);
            let line = std::mem::take(&mut self.line);
            self.process(&line, &mut on);
            self.line = line;
            self.line.clear();
            let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
            if bytes[end] == b'\r' && end + 1 == bytes.len() {
                self.after_cr = true;
            }
            bytes = &bytes[end + if crlf { 2 } else { 1 }..];
        }
        self.line.extend_from_slice(bytes);
    }

    fn process(&mut self, mut line: &[u8], on: &mut impl FnMut(Dispatched<'_>)) {
        if !self.past_first_line {
            self.past_first_line = true;
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        let event = &mut self.event;
        if line.is_empty() {
            if !event.data.is_empty() {
                if event.data.ends_with('\n') {
                    event.data.pop();
                }
                if event.event_type.is_empty() {
                    event.event_type.push_str("message");
                }
                on(Dispatched::Event(event));
                event.data.clear();
            }
            event.event_type.clear();
            return;
        }
        let line = String::from_utf8_lossy(line);
        if let Some(comment) = line.strip_prefix(':') {
            on(Dispatched::Comment(comment));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => value.clone_into(&mut event.event_type),
            "data" => {
                event.data.push_str(value);
                event.data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut event.last_event_id),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }
}

/// What a client makes of a whole event stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedStream {
    /// Events dispatched, in order.
    pub events: Vec<ParsedEvent>,
    /// The last `retry:` value accepted, in milliseconds.
    pub retry: Option<u64>,
    /// Comment lines seen (without the colon).
    pub comments: Vec<String>,
}

/// Parses `stream` as a browser's `EventSource` would.
pub fn parse_event_stream(stream: &str) -> ParsedStream {
    let mut out = ParsedStream::default();
    let mut parser = EventStreamParser::new();
    parser.feed(stream.as_bytes(), |dispatched| match dispatched {
        Dispatched::Event(event) => out.events.push(event.clone()),
        Dispatched::Comment(comment) => out.comments.push(comment.to_owned()),
    });
    out.retry = parser.retry();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "\u{feff}: ok\nretry: 3000\n\nid: 1\nevent: a\ndata: x\r\ndata:  y\r\rdata\n\n\
                          data: no type\r\n\r\nid: 2\0\ndata: z\n\n:c\nevent: unfinished\ndata: w";

    #[test]
    fn a_whole_stream_as_the_spec_reads_it() {
        let parsed = parse_event_stream(STREAM);
        let event = |t: &str, d: &str, id: &str| ParsedEvent {
            event_type: t.into(),
            data: d.into(),
            last_event_id: id.into(),
        };
        assert_eq!(
            parsed.events,
            [
                event("a", "x\n y", "1"),
                // `data` with no colon: an empty line of data, and an event with empty data.
                event("message", "", "1"),
                event("message", "no type", "1"),
                event("message", "z", "1"),
            ]
        );
        assert_eq!(parsed.retry, Some(3000));
        assert_eq!(parsed.comments, [" ok", "c"]);
    }

    #[test]
    fn pieces_of_any_size_read_the_same() {
        let whole = parse_event_stream(STREAM);
        for piece in 1..STREAM.len() {
            let mut parser = EventStreamParser::new();
            let mut parsed = ParsedStream::default();
            for part in STREAM.as_bytes().chunks(piece) {
                parser.feed(part, |d| match d {
                    Dispatched::Event(e) => parsed.events.push(e.clone()),
                    Dispatched::Comment(c) => parsed.comments.push(c.to_owned()),
                });
            }
            parsed.retry = parser.retry();
            assert_eq!(parsed, whole, "pieces of {piece}");
        }
    }
}
