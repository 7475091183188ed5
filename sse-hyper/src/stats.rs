//! [`RouterStats`]: what the router refused for its own limits (the hub counts the rest).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) publish_too_large: AtomicU64,
    pub(crate) publish_over_budget: AtomicU64,
    pub(crate) bad_event_names: AtomicU64,
    pub(crate) connections_shed: AtomicU64,
    /// By [`HandshakeFailure`](crate::tls::HandshakeFailure), in its order.
    pub(crate) tls_handshake_failures: [AtomicU64; 4],
}

/// Requests the router refused for its own limits (the hub counts the rest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RouterStats {
    /// Publish bodies over the size limit (`413`).
    pub publish_too_large: u64,
    /// Publish bodies refused because the body budget stayed spent (`503`).
    pub publish_over_budget: u64,
    /// Event-stream requests whose event names were missing, too many, too long or invalid (`400`).
    pub bad_event_names: u64,
    /// Connections accepted while the process was out of file descriptors, answered at once
    /// (the health check) or with `503`, and closed.
    pub connections_shed: u64,
    /// TLS handshakes that failed, by reason.
    pub tls_handshake_failures: TlsHandshakeFailures,
    /// The auth callout's outcomes, when sessions come from one.
    pub auth_callout: Option<crate::callout::CalloutStats>,
    /// The publishers' callout's outcomes, when there is one.
    pub publish_callout: Option<crate::callout::CalloutStats>,
}

/// TLS handshakes that failed, by reason (`sse_tls_handshake_failures_total{reason}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TlsHandshakeFailures {
    /// No handshake within the first-request timeout.
    pub timeout: u64,
    /// The client closed or reset the connection during the handshake.
    pub closed: u64,
    /// A client certificate that the publisher CA did not sign, or an invalid one.
    pub client_certificate: u64,
    /// Anything else TLS refused: not TLS, no common version or cipher suite, an alert.
    pub protocol: u64,
}

impl Counters {
    /// The counts now.
    pub(crate) fn snapshot(&self) -> RouterStats {
        RouterStats {
            publish_too_large: self.publish_too_large.load(Ordering::Relaxed),
            publish_over_budget: self.publish_over_budget.load(Ordering::Relaxed),
            bad_event_names: self.bad_event_names.load(Ordering::Relaxed),
            connections_shed: self.connections_shed.load(Ordering::Relaxed),
            tls_handshake_failures: {
                let [timeout, closed, client_certificate, protocol] = self
                    .tls_handshake_failures
                    .each_ref()
                    .map(|count| count.load(Ordering::Relaxed));
                TlsHandshakeFailures {
                    timeout,
                    closed,
                    client_certificate,
                    protocol,
                }
            },
            auth_callout: None,
            publish_callout: None,
        }
    }
}
