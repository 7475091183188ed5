//! The nodes of a RabbitMQ cluster the backend may connect to: the URL names one, or several
//! comma-separated. Connections go to the node that answered last; when it fails, to the next.

use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::uri::AMQPUri;
use sse_core::BackendError;
use sse_core::connect::cluster_addresses;

use crate::NAME;

/// The cluster's nodes and which one to try first.
#[derive(Debug)]
pub(crate) struct Nodes {
    uris: Vec<AMQPUri>,
    first: AtomicUsize,
}

impl Nodes {
    /// The nodes of `url` (`amqp://a:5672/%2f,amqp://b:5672/%2f`); a [`BackendError::Config`]
    /// names one that is not an AMQP URL.
    pub(crate) fn parse(url: &str) -> Result<Nodes, BackendError> {
        let uris = cluster_addresses(NAME, url, |url| {
            url.parse::<AMQPUri>()
                .map_err(|e| format!("invalid AMQP URL: {e}"))
        })?;
        Ok(Nodes {
            uris,
            first: AtomicUsize::new(0),
        })
    }

    /// Every node once, the one to try first first.
    pub(crate) fn in_turn(&self) -> impl Iterator<Item = AMQPUri> + '_ {
        let first = self.first.load(Ordering::Relaxed);
        (0..self.uris.len()).map(move |i| self.uris[(first + i) % self.uris.len()].clone())
    }

    /// The node tried first did not answer: the next one is tried first from now on.
    pub(crate) fn failed(&self) {
        let n = self.uris.len();
        let _ = self
            .first
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| Some((f + 1) % n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(nodes: &Nodes) -> Vec<String> {
        nodes.in_turn().map(|u| u.authority.host).collect()
    }

    #[test]
    fn nodes_are_tried_from_the_last_that_answered() {
        let nodes = Nodes::parse("amqp://a:5672/%2f, amqp://b:5672/%2f,amqp://c:5672/%2f")
            .expect("three nodes");
        assert_eq!(hosts(&nodes), ["a", "b", "c"]);
        nodes.failed();
        assert_eq!(hosts(&nodes), ["b", "c", "a"]);
        nodes.failed();
        nodes.failed();
        assert_eq!(hosts(&nodes), ["a", "b", "c"]);
    }

    #[test]
    fn a_bad_or_missing_url_is_a_config_error() {
        for url in ["amqp://a:5672/%2f,http://b", "", " , "] {
            assert!(
                matches!(Nodes::parse(url), Err(BackendError::Config { .. })),
                "{url:?}"
            );
        }
    }
}
