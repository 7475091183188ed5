//! Picking a backend by name: what the hub's flags say ([`BackendSettings`]), how a backend's
//! own configuration is made from them ([`BackendConfig`]), and the entry each backend crate
//! offers a hub's table of backends ([`Connector`]).
//!
//! A backend crate has one `Config` type that implements [`BackendConfig`] and exports
//! `pub const CONNECTOR: Connector = Connector::of::<Config>("name", "…")`; a hub that offers it
//! lists that constant, and nothing else about the backend.
//!
//! ```
//! use std::sync::Arc;
//! use sse_core::connect::{BackendConfig, BackendSettings, Connector};
//! use sse_core::{BackendError, LocalBackend};
//!
//! /// A backend's configuration, made from the hub's settings.
//! struct Config;
//!
//! impl BackendConfig for Config {
//!     type Backend = LocalBackend;
//!     fn from_settings(mut settings: BackendSettings) -> Result<Self, BackendError> {
//!         settings.finish("example")?; // refuses options it does not know
//!         Ok(Config)
//!     }
//!     async fn connect(self) -> Result<LocalBackend, BackendError> {
//!         Ok(LocalBackend::new())
//!     }
//! }
//!
//! const CONNECTOR: Connector = Connector::of::<Config>("example", "An example");
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let backend = (CONNECTOR.connect)(BackendSettings::new("send.sse.event")).await.unwrap();
//! assert_eq!(backend.name(), "local");
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::FanoutBackend;
use crate::error::BackendError;
use crate::replay::ReplayConfig;
use crate::route::Routing;

/// What a hub knows of the backend it is told to use: the broker's URL, the name the instances
/// share, and the backend's own options (the hub's `--backend-option key=value`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BackendSettings {
    /// The broker's address as given (`--backend-url`); `None`: the backend's default.
    pub url: Option<String>,
    /// The channel, subject, exchange or topic the instances share (`--channel`).
    pub channel: String,
    /// This application's name (`--app-name`).
    pub app_name: String,
    /// This instance's id: names what belongs to the instance alone (a queue, a consumer).
    pub instance_id: String,
    /// What the broker keeps for `Last-Event-ID` (`None`: nothing).
    pub history: Option<ReplayConfig>,
    /// How the hub will route targeted events: a backend that offers no routes may refuse
    /// [`Routing::Session`] here, before it touches the broker.
    pub routing: Routing,
    /// The backend's own options by name. [`take`](Self::take) them, then
    /// [`finish`](Self::finish): a name left over is an error, not a silently ignored typo.
    pub options: BTreeMap<String, String>,
}

impl BackendSettings {
    /// Settings for `channel`, with the default URL, no history and no options.
    pub fn new(channel: impl Into<String>) -> Self {
        BackendSettings {
            channel: channel.into(),
            ..BackendSettings::default()
        }
    }

    /// Sets the option `key` to `value`.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }

    /// Removes the option `key` and parses its value; `backend` names the backend in the error
    /// that an unparsable value gives.
    pub fn take<T: FromStr>(
        &mut self,
        backend: &'static str,
        key: &str,
    ) -> Result<Option<T>, BackendError>
    where
        T::Err: fmt::Display,
    {
        match self.options.remove(key) {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|e| BackendError::Config {
                backend,
                message: format!("option {key}={text}: {e}"),
            }),
        }
    }

    /// Removes every option whose key starts with `prefix`, with the prefix cut off.
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, String)> {
        let keys: Vec<String> = self
            .options
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let value = self.options.remove(&k)?;
                Some((k[prefix.len()..].to_owned(), value))
            })
            .collect()
    }

    /// Fails when an option is left that the backend did not take.
    pub fn finish(&mut self, backend: &'static str) -> Result<(), BackendError> {
        match self.options.keys().next() {
            None => Ok(()),
            Some(key) => Err(BackendError::Config {
                backend,
                message: format!("unknown option `{key}`"),
            }),
        }
    }
}

/// A backend's configuration: made from the hub's [`BackendSettings`], and what connects it.
pub trait BackendConfig: Sized + Send + 'static {
    /// The backend it connects.
    type Backend: FanoutBackend;

    /// The configuration the settings ask for, the backend's defaults elsewhere.
    fn from_settings(settings: BackendSettings) -> Result<Self, BackendError>;

    /// Connects to the broker. Fails within a bounded time when it cannot be reached.
    fn connect(self) -> impl Future<Output = Result<Self::Backend, BackendError>> + Send;
}

/// What [`Connector::connect`] returns.
pub type Connecting =
    Pin<Box<dyn Future<Output = Result<Arc<dyn FanoutBackend>, BackendError>> + Send>>;

/// The addresses of a URL setting that names a cluster: one, or several comma-separated
/// (`nats://a:4222,nats://b:4222`), each parsed by `parse`; a [`BackendError::Config`] error for
/// one `parse` refuses (its message says why) or when none is given.
///
/// ```
/// use sse_core::connect::cluster_addresses;
/// let ports = cluster_addresses("test", "a:1, b:2", |a| a.rsplit(':').next().unwrap().parse::<u16>().map_err(|e| e.to_string()));
/// assert_eq!(ports.unwrap(), [1, 2]);
/// assert!(cluster_addresses("test", " , ", |a| Ok::<_, String>(a.to_owned())).is_err());
/// ```
pub fn cluster_addresses<T>(
    backend: &'static str,
    url: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, BackendError> {
    let config = |message: String| BackendError::Config { backend, message };
    let addresses = url
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(|address| parse(address).map_err(|e| config(format!("`{address}`: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if addresses.is_empty() {
        return Err(config("no address given".to_owned()));
    }
    Ok(addresses)
}

/// One row of a hub's table of backends: a name for `--backend`, and how to connect it.
#[derive(Clone, Copy)]
pub struct Connector {
    /// The name `--backend` picks it by.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Makes the backend's configuration from the settings and connects it.
    pub connect: fn(BackendSettings) -> Connecting,
}

impl Connector {
    /// The connector of the backend that `C` configures.
    pub const fn of<C: BackendConfig>(name: &'static str, about: &'static str) -> Self {
        Connector {
            name,
            about,
            connect: connect_with::<C>,
        }
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn connect_with<C: BackendConfig>(settings: BackendSettings) -> Connecting {
    Box::pin(async move {
        let backend = C::from_settings(settings)?.connect().await?;
        Ok(Arc::new(backend) as Arc<dyn FanoutBackend>)
    })
}

/// The in-process backend's configuration: one instance, no broker, no options.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalConfig;

impl BackendConfig for LocalConfig {
    type Backend = crate::LocalBackend;

    fn from_settings(mut settings: BackendSettings) -> Result<Self, BackendError> {
        if settings.url.is_some() {
            return Err(BackendError::Config {
                backend: "local",
                message: "the local backend has no broker, so no URL".to_owned(),
            });
        }
        settings.finish("local")?;
        Ok(LocalConfig)
    }

    async fn connect(self) -> Result<crate::LocalBackend, BackendError> {
        Ok(crate::LocalBackend::new())
    }
}

/// The in-process backend's row in a hub's table.
pub const LOCAL: Connector =
    Connector::of::<LocalConfig>("local", "In-process: one instance, no broker");

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn options_are_parsed_and_leftovers_refused() {
        let mut settings = BackendSettings::new("c")
            .option("partitions", "4")
            .option("kafka.acks", "all")
            .option("typo", "1");
        assert_eq!(settings.take::<u32>("x", "partitions").unwrap(), Some(4));
        assert_eq!(settings.take::<u32>("x", "partitions").unwrap(), None);
        assert_eq!(
            settings.take_prefixed("kafka."),
            vec![("acks".to_owned(), "all".to_owned())]
        );
        let error = settings.finish("x").unwrap_err().to_string();
        assert!(error.contains("unknown option `typo`"), "{error}");
        let mut bad = BackendSettings::new("c").option("partitions", "many");
        let error = bad.take::<u32>("x", "partitions").unwrap_err().to_string();
        assert!(error.contains("partitions=many"), "{error}");
    }

    #[tokio::test]
    async fn the_local_connector_connects_and_refuses_a_url() {
        let backend = (LOCAL.connect)(BackendSettings::new("c")).await.unwrap();
        assert_eq!(backend.name(), "local");
        let mut settings = BackendSettings::new("c");
        settings.url = Some("redis://x".to_owned());
        assert!((LOCAL.connect)(settings).await.is_err());
    }
}
