//! The SSE encoder, written to the letter of the WHATWG HTML standard, "Server-sent events".
//!
//! An event is encoded once into a [`Bytes`] frame that every recipient shares. Single-line fields
//! (`id`, `event`, comments) that contain CR, LF or NUL are rejected with a [`FieldError`], because they
//! would let whoever supplied them inject fields of their own. `data` is split instead: after every CR,
//! LF or CRLF a new `data:` line starts, so a spec-following client reassembles the payload exactly
//! (with LF as its line separator, which is what `EventSource` hands to the page).
//!
//! ```
//! use sse_core::encode::Event;
//!
//! let frame = Event::new("line one\r\nline two").name("greeting").id("7").encode().unwrap();
//! assert_eq!(&frame[..], b"id: 7\nevent: greeting\ndata: line one\ndata: line two\n\n");
//! ```

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// A single-line SSE field that cannot be written as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// The value contains a character that would end the field early (CR, LF) or that the spec
    /// makes the client ignore the field for (NUL, in `id`).
    #[error("{field} must not contain {character}")]
    ForbiddenCharacter {
        /// The field: `event`, `id`, `comment`, `session`.
        field: &'static str,
        /// `CR`, `LF` or `NUL`.
        character: &'static str,
    },
    /// The value is empty where an empty value means something else (an empty `event` means
    /// `message` to the client).
    #[error("{field} must not be empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
}

/// Checks that `value` can be written as the single-line field `field`: no CR, LF or NUL.
///
/// ```
/// # use sse_core::encode::{check_single_line, FieldError};
/// assert!(check_single_line("event", "orders").is_ok());
/// assert!(matches!(check_single_line("id", "a\nb"), Err(FieldError::ForbiddenCharacter { .. })));
/// ```
pub fn check_single_line(field: &'static str, value: &str) -> Result<(), FieldError> {
    match memchr::memchr3(b'\r', b'\n', 0, value.as_bytes()) {
        None => Ok(()),
        Some(i) => Err(FieldError::ForbiddenCharacter {
            field,
            character: match value.as_bytes()[i] {
                b'\r' => "CR",
                b'\n' => "LF",
                _ => "NUL",
            },
        }),
    }
}

/// Checks an event name: single-line and not empty.
pub fn check_event_name(name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::Empty { field: "event" });
    }
    check_single_line("event", name)
}

/// One SSE event, borrowed from its parts, ready to be encoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Event<'a> {
    id: Option<&'a str>,
    name: Option<&'a str>,
    retry: Option<Duration>,
    data: &'a str,
}

impl<'a> Event<'a> {
    /// An unnamed event (`message` to the client) carrying `data`, which may span several lines.
    pub fn new(data: &'a str) -> Self {
        Event {
            data,
            ..Event::default()
        }
    }

    /// Sets the `event:` field, the name `EventSource.addEventListener` listens for.
    pub fn name(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }

    /// Sets the `id:` field, which the client sends back as `Last-Event-ID` when it reconnects.
    pub fn id(mut self, id: &'a str) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the `retry:` field: how long the client waits before reconnecting.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Encodes the event into one frame, ending with the blank line that dispatches it.
    pub fn encode(&self) -> Result<Bytes, FieldError> {
        if let Some(id) = self.id {
            check_single_line("id", id)?;
        }
        if let Some(name) = self.name {
            check_event_name(name)?;
        }
        Ok(self.encode_checked())
    }

    /// Encodes fields that the caller has already checked.
    pub(crate) fn encode_checked(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(
            self.data.len()
                + self.id.map_or(0, |s| s.len() + 5)
                + self.name.map_or(0, |s| s.len() + 8)
                + 32,
        );
        if let Some(id) = self.id {
            put_field(&mut buf, b"id: ", id.as_bytes());
        }
        if let Some(name) = self.name {
            put_field(&mut buf, b"event: ", name.as_bytes());
        }
        if let Some(retry) = self.retry {
            put_retry(&mut buf, retry);
        }
        put_data(&mut buf, self.data);
        buf.put_u8(b'\n');
        buf.freeze()
    }
}

/// A comment frame (`: text`), which clients ignore: used for heartbeats and to open a stream.
///
/// ```
/// assert_eq!(&sse_core::encode::comment("ping").unwrap()[..], b": ping\n\n");
/// ```
pub fn comment(text: &str) -> Result<Bytes, FieldError> {
    check_single_line("comment", text)?;
    let mut buf = BytesMut::with_capacity(text.len() + 4);
    put_field(&mut buf, b": ", text.as_bytes());
    buf.put_u8(b'\n');
    Ok(buf.freeze())
}

/// A frame holding only a `retry:` field: the reconnection delay the client adopts.
///
/// It ends with the field's own line and no blank line: the spec applies `retry:` as the line is
/// read, and a blank line after it would dispatch nothing in a conforming client but an empty
/// `message` event in a lax one (e.g. Python's `httpx-sse`).
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(&sse_core::encode::retry(Duration::from_secs(3))[..], b"retry: 3000\n");
/// ```
pub fn retry(delay: Duration) -> Bytes {
    let mut buf = BytesMut::with_capacity(32);
    put_retry(&mut buf, delay);
    buf.freeze()
}

fn put_field(buf: &mut BytesMut, prefix: &[u8], value: &[u8]) {
    buf.put_slice(prefix);
    buf.put_slice(value);
    buf.put_u8(b'\n');
}

fn put_retry(buf: &mut BytesMut, delay: Duration) {
    let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    put_field(buf, b"retry: ", millis.to_string().as_bytes());
}

/// Writes `data` as one `data:` line per line of it, breaking at CR, LF and CRLF alike.
fn put_data(buf: &mut BytesMut, data: &str) {
    let mut rest = data.as_bytes();
    loop {
        match memchr::memchr2(b'\r', b'\n', rest) {
            None => {
                put_field(buf, b"data: ", rest);
                return;
            }
            Some(i) => {
                put_field(buf, b"data: ", &rest[..i]);
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn data(d: &str) -> String {
        String::from_utf8(Event::new(d).encode().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn single_line() {
        assert_eq!(data("hello"), "data: hello\n\n");
    }

    #[test]
    fn lf_cr_and_crlf_each_start_a_new_data_line() {
        assert_eq!(data("a\nb"), "data: a\ndata: b\n\n");
        assert_eq!(data("a\rb"), "data: a\ndata: b\n\n");
        assert_eq!(data("a\r\nb"), "data: a\ndata: b\n\n");
        assert_eq!(data("a\n\rb"), "data: a\ndata: \ndata: b\n\n");
        assert_eq!(data("a\r\rb"), "data: a\ndata: \ndata: b\n\n");
    }

    #[test]
    fn trailing_and_leading_line_breaks_are_kept() {
        assert_eq!(data("a\n"), "data: a\ndata: \n\n");
        assert_eq!(data("\na"), "data: \ndata: a\n\n");
        assert_eq!(data("\r\n"), "data: \ndata: \n\n");
    }

    #[test]
    fn empty_payload_is_one_empty_data_line() {
        assert_eq!(data(""), "data: \n\n");
    }

    #[test]
    fn leading_space_in_data_is_kept() {
        // The client strips exactly one space after the colon, the one we always write.
        assert_eq!(data("  two spaces"), "data:   two spaces\n\n");
        assert_eq!(data(":colon"), "data: :colon\n\n");
    }

    #[test]
    fn unicode_passes_through() {
        assert_eq!(data("grüße 🌍\u{2028}x"), "data: grüße 🌍\u{2028}x\n\n");
    }

    #[test]
    fn long_payload() {
        let long = "x".repeat(1 << 20);
        let frame = Event::new(&long).encode().unwrap();
        assert_eq!(frame.len(), long.len() + "data: \n\n".len());
    }

    #[test]
    fn all_fields_in_order() {
        let frame = Event::new("d")
            .id("1")
            .name("n")
            .retry(Duration::from_millis(1500))
            .encode()
            .unwrap();
        assert_eq!(&frame[..], b"id: 1\nevent: n\nretry: 1500\ndata: d\n\n");
    }

    #[test]
    fn injection_through_single_line_fields_is_rejected() {
        for bad in ["a\nb", "a\rb", "a\r\nb", "a\0b"] {
            assert!(Event::new("d").name(bad).encode().is_err(), "{bad:?}");
            assert!(Event::new("d").id(bad).encode().is_err(), "{bad:?}");
            assert!(comment(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Event::new("d").name("").encode(),
            Err(FieldError::Empty { field: "event" })
        );
        assert_eq!(
            check_single_line("id", "x\0"),
            Err(FieldError::ForbiddenCharacter {
                field: "id",
                character: "NUL"
            })
        );
    }

    #[test]
    fn comment_and_retry() {
        assert_eq!(&comment("").unwrap()[..], b": \n\n");
        assert_eq!(&retry(Duration::from_millis(250))[..], b"retry: 250\n");
    }
}
