//! An incremental event-stream parser, step by step as the WHATWG HTML standard ("Server-sent
//! events", interpreting an event stream) says, for bytes that arrive in arbitrary pieces.

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The event type (`message` when the stream named none).
    pub event_type: String,
    /// The data, lines joined with LF.
    pub data: String,
    /// The last event id at the time of dispatch.
    pub last_event_id: String,
}

/// The parser's state between pieces.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The last piece ended with CR: an LF first in the next one ends no other line.
    after_cr: bool,
    data: String,
    event_type: String,
    last_event_id: String,
    /// Whether the stream's first bytes (which may be a BOM) have been seen.
    started: bool,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next piece of the stream; calls `on_event` for every event it completes.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_event: impl FnMut(&Event)) {
        if !self.started && !bytes.is_empty() {
            self.started = true;
            bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        }
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        while let Some(end) = memchr::memchr2(b'\r', b'\n', bytes) {
            self.line.extend_from_slice(&bytes[..end]);
            let line = std::mem::take(&mut self.line);
            self.process(&line, &mut on_event);
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

    fn process(&mut self, line: &[u8], on_event: &mut impl FnMut(&Event)) {
        if line.is_empty() {
            if !self.data.is_empty() {
                if self.data.ends_with('\n') {
                    self.data.pop();
                }
                let event = Event {
                    event_type: if self.event_type.is_empty() {
                        "message".to_owned()
                    } else {
                        std::mem::take(&mut self.event_type)
                    },
                    data: std::mem::take(&mut self.data),
                    last_event_id: self.last_event_id.clone(),
                };
                on_event(&event);
            }
            self.event_type.clear();
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.last_event_id),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sse_core::testkit::parse_event_stream;

    fn parse_in_pieces(stream: &str, piece: usize) -> Vec<Event> {
        let mut parser = Parser::new();
        let mut events = Vec::new();
        for part in stream.as_bytes().chunks(piece.max(1)) {
            parser.feed(part, |e| events.push(e.clone()));
        }
        events
    }

    #[test]
    fn agrees_with_the_reference_parser_whatever_the_pieces() {
        let stream = "\u{feff}: ok\nretry: 3000\n\nid: 1\nevent: a\ndata: x\r\ndata:  y\r\rdata\n\n\
                      data: no type\r\n\r\nid: 2\0\ndata: z\n\nevent: unfinished\ndata: w";
        let reference = parse_event_stream(stream);
        for piece in 1..stream.len() {
            let events = parse_in_pieces(stream, piece);
            assert_eq!(events.len(), reference.events.len(), "piece {piece}");
            for (mine, theirs) in events.iter().zip(&reference.events) {
                assert_eq!(mine.event_type, theirs.event_type, "piece {piece}");
                assert_eq!(mine.data, theirs.data, "piece {piece}");
                assert_eq!(mine.last_event_id, theirs.last_event_id, "piece {piece}");
            }
        }
    }
}
