//! A hub's stream read as a browser reads it: the frames of an [`EventStream`] through the
//! spec's parser, one dispatched event at a time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::WAIT;
use super::parse::{Dispatched, EventStreamParser, ParsedEvent};
use crate::hub::Hub;
use crate::repository::EventFilter;
use crate::stream::EventStream;

/// A client of one hub: a stream opened through the hub's API (as the HTTP endpoint opens it),
/// parsed as an `EventSource` would.
#[derive(Debug)]
pub struct Client {
    stream: EventStream,
    parser: EventStreamParser,
    ready: VecDeque<ParsedEvent>,
}

impl Client {
    /// Opens a stream on `hub` for `session` (or none), listening to every event name, resuming
    /// after `last_event_id` when given. Panics if the hub refuses it.
    pub async fn open(hub: &Hub, session: Option<&str>, last_event_id: Option<&str>) -> Client {
        let subscription = hub.subscription(session.map(Arc::from), EventFilter::Any);
        let stream = hub
            .open_after(subscription, last_event_id)
            .await
            .unwrap_or_else(|e| panic!("the hub refused a stream: {e}"));
        Client {
            stream,
            parser: EventStreamParser::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next event, if one is dispatched within `within`; `None` also when the stream ended.
    pub async fn next_within(&mut self, within: Duration) -> Option<ParsedEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            self.absorb(&frame);
        }
    }

    /// The next event; panics (saying `what`) if none comes within [`WAIT`].
    pub async fn next(&mut self, what: &str) -> ParsedEvent {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("{what}: no event within {WAIT:?}, or the stream ended"))
    }

    /// Every event until the stream ends (as it does when its hub drains); panics if it does
    /// not end within [`WAIT`].
    pub async fn until_end(&mut self) -> Vec<ParsedEvent> {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(event) = self.ready.pop_front() {
                events.push(event);
                continue;
            }
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("the stream did not end within {WAIT:?}"));
            let Some(frame) = frame else {
                return events;
            };
            self.absorb(&frame);
        }
    }

    fn absorb(&mut self, frame: &[u8]) {
        let ready = &mut self.ready;
        self.parser.feed(frame, |d| {
            if let Dispatched::Event(e) = d {
                ready.push_back(e.clone());
            }
        });
    }

    /// The reconnection delay the stream asked for last (`retry:`), in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.parser.retry()
    }
}
