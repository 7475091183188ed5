//! The sse-fanout hub: a ready-to-run SSE server that fans events out over a broker.
//!
//! `cargo run --release` serves on 127.0.0.1:8080 with the embedded local backend; `--help` lists
//! every flag and its `SSE_FANOUT_*` environment variable.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sse_fanout::connect::BackendSettings;
use sse_fanout::hyper::{
    CalloutConfig, CalloutSessions, Cors, RouterConfig, ServeOptions, SseRouter, Tls, TlsFiles,
};
use sse_fanout::presence::PresenceConfig;
use sse_fanout::{AcceptApps, FanoutBackend, Hub, HubConfig, ProbeConfig, ReplayConfig, Routing};
use tokio::net::TcpListener;

/// jemalloc, with a background thread that gives freed memory back to the system within about a
/// second: after a burst of closed streams the hub's resident memory goes back down (the soak
/// test checks it), and two worker threads do not contend for one heap as with glibc's malloc.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (the symbol is the documented way to set them).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

mod healthcheck;

const DEMO_PAGE: &str = include_str!("demo.html");

/// Pushes Server-Sent Events to browsers from any number of instances.
#[derive(Debug, Parser)]
#[command(name = "sse-fanout", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to listen on.
    #[arg(long, env = "SSE_FANOUT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Which broker carries events between instances: `local` (in-process, one instance), or
    /// one of the backends this build has (`redis`, `nats`, `rabbit`, `kafka`: cargo features).
    #[arg(long, env = "SSE_FANOUT_BACKEND", default_value = "local")]
    backend: String,

    /// The broker's address (redis://…, nats://…, amqp://…, host:port for Kafka).
    #[arg(long, env = "SSE_FANOUT_BACKEND_URL")]
    backend_url: Option<String>,

    /// An option of the backend, `key=value` (repeatable; `;` separates several in the env var):
    /// each backend's crate documents its own, and refuses one it does not know.
    #[arg(long = "backend-option", env = "SSE_FANOUT_BACKEND_OPTIONS", value_delimiter = ';', value_parser = parse_key_value)]
    backend_options: Vec<(String, String)>,

    /// The channel, subject, exchange or topic the instances share.
    #[arg(long, env = "SSE_FANOUT_CHANNEL", default_value = "send.sse.event")]
    channel: String,

    /// This application's name, written into every envelope; envelopes of other apps are dropped.
    #[arg(long, env = "SSE_FANOUT_APP_NAME", default_value = "sse-fanout")]
    app_name: String,

    /// Also deliver envelopes of these apps (repeatable; `*` for every app).
    #[arg(
        long = "accept-app",
        env = "SSE_FANOUT_ACCEPT_APPS",
        value_delimiter = ','
    )]
    accept_apps: Vec<String>,

    /// This instance's id (default: random).
    #[arg(long, env = "SSE_FANOUT_INSTANCE_ID")]
    instance_id: Option<String>,

    /// Seconds of idle time before a heartbeat comment (0: none). `15` or `15s`.
    #[arg(long, env = "SSE_FANOUT_HEARTBEAT", default_value = "15", value_parser = parse_duration)]
    heartbeat: Duration,

    /// Seconds a stream stays open before the client is made to reconnect (0: forever).
    #[arg(long, env = "SSE_FANOUT_EMITTER_TIMEOUT", default_value = "180", value_parser = parse_duration)]
    emitter_timeout: Duration,

    /// Frames that may wait for one client before it is closed as too slow.
    #[arg(long, env = "SSE_FANOUT_QUEUE_SIZE", default_value_t = 256)]
    queue_size: usize,

    /// Bytes that may wait for one client before it is closed as too slow (one event of any size
    /// may always wait). With --queue-size, what bounds a stream's memory.
    #[arg(long, env = "SSE_FANOUT_MAX_STREAM_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_stream_bytes: usize,

    /// Reconnection delay sent to clients as `retry:` when a stream opens (0: none).
    #[arg(long, env = "SSE_FANOUT_RETRY", default_value = "3", value_parser = parse_duration)]
    retry: Duration,

    /// Events kept for `Last-Event-ID` replay (0: no replay).
    #[arg(long, env = "SSE_FANOUT_REPLAY_EVENTS", default_value_t = 10_000)]
    replay_events: usize,

    /// Seconds an event stays replayable. `300` or `5m`.
    #[arg(long, env = "SSE_FANOUT_REPLAY_AGE", default_value = "300", value_parser = parse_duration)]
    replay_age: Duration,

    /// Bytes of encoded events kept for replay at most.
    #[arg(long, env = "SSE_FANOUT_REPLAY_BYTES", default_value_t = 64 * 1024 * 1024)]
    replay_bytes: usize,

    /// Keep the replay history in the broker too, with the same bounds (a Redis stream, a JetStream
    /// stream, a RabbitMQ stream queue; Kafka's topic is one), and load it when starting, so an
    /// instance started later serves `Last-Event-ID`: `on` or `off`.
    #[arg(long, env = "SSE_FANOUT_BROKER_HISTORY", default_value = "on", value_parser = parse_switch, action = clap::ArgAction::Set)]
    broker_history: bool,

    /// How targeted events reach instances: `broadcast` (every instance receives every event and
    /// filters) or `session` (only instances holding a stream of the session receive it; Redis,
    /// NATS and RabbitMQ).
    #[arg(long, env = "SSE_FANOUT_ROUTING", value_enum, default_value_t = RoutingKind::Broadcast)]
    routing: RoutingKind,

    /// Session routing: how long a session's route stays subscribed after its last stream on this
    /// instance closed, so that a reconnecting client finds it still there. `5` or `500ms`.
    #[arg(long, env = "SSE_FANOUT_ROUTE_LINGER", default_value = "5", value_parser = parse_duration)]
    route_linger: Duration,

    /// How long the broker subscription may deliver nothing before the hub sends a probe through
    /// the broker to itself; `0` never probes (see README, "Delivery probe").
    #[arg(long, env = "SSE_FANOUT_PROBE_INTERVAL", default_value = "30", value_parser = parse_duration)]
    probe_interval: Duration,

    /// How long a probe has to come back before the hub reports itself down and subscribes again.
    #[arg(long, env = "SSE_FANOUT_PROBE_TIMEOUT", default_value = "10", value_parser = parse_duration)]
    probe_timeout: Duration,

    /// Track presence: which sessions have a stream open anywhere in the cluster, answered at
    /// `GET /sse/presence` (see README, "Presence").
    #[arg(long, env = "SSE_FANOUT_PRESENCE")]
    presence: bool,

    /// Send presence events under this event name: one `online` when a session's first stream
    /// opens anywhere, one `offline` when its last one closed everywhere (after the linger).
    /// Implies `--presence`; the same on every instance.
    #[arg(long, env = "SSE_FANOUT_PRESENCE_EVENTS")]
    presence_events: Option<String>,

    /// How often each instance says it is alive to the others; three intervals of silence evict
    /// it (its sessions go offline).
    #[arg(long, env = "SSE_FANOUT_PRESENCE_INTERVAL", default_value = "2", value_parser = parse_duration)]
    presence_interval: Duration,

    /// How long a session with no stream left stays online before its offline event: a client
    /// that reconnects within it causes no event.
    #[arg(long, env = "SSE_FANOUT_PRESENCE_LINGER", default_value = "5", value_parser = parse_duration)]
    presence_linger: Duration,

    /// Session routing: the hash partitions of session ids. On RabbitMQ each one binds when an
    /// instance holds a session in it (see README's RabbitMQ section for the trade-off); on a
    /// Redis Cluster the routes are spread over them, each on its own slot (default 16; 0 keeps
    /// them in the channel's slot). Same as `--backend-option route-partitions=N`.
    #[arg(long, env = "SSE_FANOUT_ROUTE_PARTITIONS")]
    route_partitions: Option<u32>,

    /// RabbitMQ: where instances receive events from. `stream`: the history stream itself, so
    /// every instance has one order and a client moving between instances gets each event once
    /// (every instance reads every event, so session routing saves nothing). `queue`: a queue of
    /// the instance's own, bound to the partitions of its sessions in session routing (less
    /// traffic; two publishers' near-simultaneous events may reach instances in either order).
    /// Without broker history, always `queue`. Default `stream`; same as
    /// `--backend-option delivery=…`.
    #[arg(long, env = "SSE_FANOUT_RABBIT_DELIVERY", value_enum)]
    rabbit_delivery: Option<RabbitDelivery>,

    /// Open streams this instance accepts (0: no limit); over it, 503 with Retry-After.
    #[arg(long, env = "SSE_FANOUT_MAX_STREAMS", default_value_t = 0)]
    max_streams: usize,

    /// Open streams one session may hold on this instance (0: no limit); over it, 429.
    #[arg(long, env = "SSE_FANOUT_MAX_STREAMS_PER_SESSION", default_value_t = 0)]
    max_streams_per_session: usize,

    /// Event names one stream may ask for.
    #[arg(long, env = "SSE_FANOUT_MAX_EVENT_NAMES", default_value_t = 64)]
    max_event_names: usize,

    /// Bytes of one event name at most.
    #[arg(long, env = "SSE_FANOUT_MAX_EVENT_NAME_LEN", default_value_t = 256)]
    max_event_name_len: usize,

    /// Bytes of a published event id or session id at most (longer: 400).
    #[arg(long, env = "SSE_FANOUT_MAX_ID_LEN", default_value_t = 256)]
    max_id_len: usize,

    /// Bearer token that POST /sse/publish requires (default: none required).
    #[arg(long, env = "SSE_FANOUT_PUBLISH_TOKEN", hide_env_values = true)]
    publish_token: Option<String>,

    /// HS256 secret: sessions come from a bearer JWT's `sub` instead of the client's own word.
    #[arg(long, env = "SSE_FANOUT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,

    /// A JWKS of RS256, ES256 and EdDSA keys, by URL (`https://…`): sessions come from a bearer
    /// JWT's `sub`, verified with the key its `kid` names. Cached; fetched again for an unknown
    /// `kid` (at most every 10 s) and every 5 minutes.
    #[arg(long, env = "SSE_FANOUT_JWKS_URL", conflicts_with_all = ["jwt_secret", "jwks_file"])]
    jwks_url: Option<String>,

    /// A CA certificate (PEM) to trust for --jwks-url's TLS, besides the usual roots.
    #[arg(long, env = "SSE_FANOUT_JWKS_CA_FILE", requires = "jwks_url")]
    jwks_ca_file: Option<std::path::PathBuf>,

    /// A JWKS file, in place of --jwks-url (read again as a URL would be fetched again).
    #[arg(long, env = "SSE_FANOUT_JWKS_FILE", conflicts_with = "jwt_secret")]
    jwks_file: Option<std::path::PathBuf>,

    /// Tokens must have one of these `iss` (repeatable).
    #[arg(
        long = "jwt-issuer",
        env = "SSE_FANOUT_JWT_ISSUERS",
        value_delimiter = ','
    )]
    jwt_issuers: Vec<String>,

    /// Tokens must name one of these in `aud` (repeatable).
    #[arg(
        long = "jwt-audience",
        env = "SSE_FANOUT_JWT_AUDIENCES",
        value_delimiter = ','
    )]
    jwt_audiences: Vec<String>,

    /// How far a token's `exp` and `nbf` may be off. `60` or `1m`.
    #[arg(long, env = "SSE_FANOUT_JWT_LEEWAY", default_value = "60", value_parser = parse_duration)]
    jwt_leeway: Duration,

    /// The claim listing the event names a stream's token allows (array, or space-separated;
    /// `*` wildcards): others get 403. Default: any event name.
    #[arg(long, env = "SSE_FANOUT_JWT_EVENTS_CLAIM")]
    jwt_events_claim: Option<String>,

    /// Let publishers use a JWT (verified like stream tokens) whose claim of this name lists the
    /// event names they may publish; others get 403. --publish-token stays valid for all.
    #[arg(long, env = "SSE_FANOUT_JWT_PUBLISH_CLAIM")]
    jwt_publish_claim: Option<String>,

    /// Ask the application who a stream request is, from the cookies and headers it carries: a
    /// GET of this URL, answered `200 {"sessionId": …, "eventNames"?: […], "cacheSeconds"?: n}`,
    /// `401` or `403` (README, "Sessions from the application"). Not with JWT sessions.
    #[arg(long, env = "SSE_FANOUT_AUTH_URL")]
    auth_url: Option<String>,

    /// Ask the application whether a publisher (POST publish or disconnect without the publish
    /// token) may publish: a GET of this URL with its forwarded headers, answered `200
    /// {"eventNames"?: […], "cacheSeconds"?: n}`, `401` or `403`. Not with --jwt-publish-claim.
    /// Timeout, cache and concurrency as the --auth-* flags say.
    #[arg(long, env = "SSE_FANOUT_PUBLISH_AUTH_URL")]
    publish_auth_url: Option<String>,

    /// Request headers the publishers' callout forwards (repeatable; default `cookie` and
    /// `authorization`).
    #[arg(
        long = "publish-auth-forward-header",
        env = "SSE_FANOUT_PUBLISH_AUTH_FORWARD_HEADERS",
        value_delimiter = ','
    )]
    publish_auth_forward_headers: Vec<String>,

    /// Request headers the auth callout forwards (repeatable; default `cookie` and
    /// `authorization`).
    #[arg(
        long = "auth-forward-header",
        env = "SSE_FANOUT_AUTH_FORWARD_HEADERS",
        value_delimiter = ','
    )]
    auth_forward_headers: Vec<String>,

    /// Forward only these cookies of the `Cookie` header (repeatable; default all of them).
    #[arg(
        long = "auth-forward-cookie",
        env = "SSE_FANOUT_AUTH_FORWARD_COOKIES",
        value_delimiter = ','
    )]
    auth_forward_cookies: Vec<String>,

    /// How long an auth callout may take (a free slot included) before the stream request gets
    /// `503` with `Retry-After`.
    #[arg(long, env = "SSE_FANOUT_AUTH_TIMEOUT", default_value = "2", value_parser = parse_duration)]
    auth_timeout: Duration,

    /// How long an auth callout's answer is reused at most for the same credential.
    #[arg(long, env = "SSE_FANOUT_AUTH_CACHE_TTL", default_value = "30", value_parser = parse_duration)]
    auth_cache_ttl: Duration,

    /// Auth callout answers kept at most.
    #[arg(long, env = "SSE_FANOUT_AUTH_CACHE_ENTRIES", default_value_t = 100_000)]
    auth_cache_entries: usize,

    /// Auth callouts in flight at most.
    #[arg(long, env = "SSE_FANOUT_AUTH_MAX_CONCURRENT", default_value_t = 64)]
    auth_max_concurrent: usize,

    /// Without `--jwt-secret` (development mode: a client names its own session), listen on a
    /// non-loopback address all the same. Anyone who reaches the hub can then read any session.
    #[arg(long, env = "SSE_FANOUT_ALLOW_DEV_SESSIONS")]
    allow_dev_sessions: bool,

    /// Seconds a request head may take on a connection, counted from when it is idle (so also
    /// how long an idle keep-alive connection stays). `10` or `10s`.
    #[arg(long, env = "SSE_FANOUT_HEAD_TIMEOUT", default_value = "10", value_parser = parse_duration)]
    head_timeout: Duration,

    /// HTTP/2: seconds without a frame from the client before a PING, and to wait for its answer.
    #[arg(long, env = "SSE_FANOUT_HTTP2_KEEP_ALIVE", default_value = "20", value_parser = parse_duration)]
    http2_keep_alive: Duration,

    /// Seconds a connection with no request in progress (an open stream is one) stays open: what
    /// ends an HTTP/2 connection without streams that answers PINGs. `60` or `1m`.
    #[arg(long, env = "SSE_FANOUT_IDLE_TIMEOUT", default_value = "60", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// The largest request head in bytes, all header lines together (at least 8192): a longer
    /// one gets `431`. The default, 32 KiB, is nginx's; browsers' heads are a few KiB, cookies
    /// included. Each connection still sending its head holds up to this much.
    #[arg(long, env = "SSE_FANOUT_MAX_HEAD_BYTES", default_value_t = sse_fanout::hyper::DEFAULT_MAX_HEAD_BYTES)]
    max_head_bytes: usize,

    /// The most header fields in one request: more get `431`.
    #[arg(long, env = "SSE_FANOUT_MAX_HEADERS", default_value_t = 100)]
    max_headers: usize,

    /// Path of the event-stream endpoint.
    #[arg(long, env = "SSE_FANOUT_PATH", default_value = "/sse/event-stream")]
    path: String,

    /// Path of the publish endpoint.
    #[arg(long, env = "SSE_FANOUT_PUBLISH_PATH", default_value = "/sse/publish")]
    publish_path: String,

    /// Path of the endpoint that ends a session's streams on every instance (guarded as
    /// publishing is).
    #[arg(
        long,
        env = "SSE_FANOUT_DISCONNECT_PATH",
        default_value = "/sse/disconnect"
    )]
    disconnect_path: String,

    /// Kafka: create the topic when it does not exist (`--backend-option create-topic=true`).
    #[arg(long, env = "SSE_FANOUT_CREATE_TOPIC")]
    create_topic: bool,

    /// Kafka: partitions of a created topic, default 1 (one keeps every instance's order of a
    /// stream the same; see README's Kafka section before raising it).
    #[arg(long, env = "SSE_FANOUT_TOPIC_PARTITIONS")]
    topic_partitions: Option<i32>,

    /// Kafka: replication factor of a created topic, default 1.
    #[arg(long, env = "SSE_FANOUT_TOPIC_REPLICATION")]
    topic_replication: Option<i32>,

    /// Kafka: a librdkafka setting, `key=value` (repeatable; `;` separates several in the env
    /// var). Same as `--backend-option librdkafka.key=value`.
    #[arg(long = "kafka-config", env = "SSE_FANOUT_KAFKA_CONFIG", value_delimiter = ';', value_parser = parse_key_value)]
    kafka_config: Vec<(String, String)>,

    /// Origins allowed to open streams and publish from a browser (CORS; repeatable; `*` for any).
    #[arg(
        long = "cors-origin",
        env = "SSE_FANOUT_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,

    /// Allow credentials (cookies, `withCredentials`) on cross-origin requests.
    #[arg(long, env = "SSE_FANOUT_CORS_CREDENTIALS")]
    cors_credentials: bool,

    /// Largest publish body in bytes.
    #[arg(long, env = "SSE_FANOUT_MAX_PUBLISH_BODY", default_value_t = 1024 * 1024)]
    max_publish_body: usize,

    /// Bytes of publish bodies all connections together may hold while they are read (at least
    /// the largest body): a body that finds no room within a second gets `503` + `Retry-After`.
    #[arg(long, env = "SSE_FANOUT_PUBLISH_BODY_BUDGET", default_value_t = 64 * 1024 * 1024)]
    publish_body_budget: usize,

    /// Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN; TLS 1.2 and 1.3) with this certificate chain,
    /// PEM, the server's certificate first. It and the key are read again when their files
    /// change and on SIGHUP; open streams keep going.
    #[arg(long, env = "SSE_FANOUT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519).
    #[arg(long, env = "SSE_FANOUT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// With TLS: publishing needs a client certificate signed by a CA in this PEM file (beside
    /// --publish-token or a publish JWT, when those are set too).
    #[arg(long, env = "SSE_FANOUT_PUBLISH_CLIENT_CA", requires = "tls_cert")]
    publish_client_ca: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Asks the hub at the listen address (`--listen`, `SSE_FANOUT_LISTEN`; a wildcard address is
    /// asked on loopback) for `/healthz`; exits 0 when it answers 200. For container health checks.
    Healthcheck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RabbitDelivery {
    /// From the history stream: one order for every instance.
    Stream,
    /// From a queue of the instance's own: session routing saves traffic.
    Queue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoutingKind {
    /// Every instance receives every event and keeps what its streams want.
    Broadcast,
    /// A targeted event goes only to instances holding a stream of its session.
    Session,
}

/// Whole seconds (`15`) or a humantime duration (`15s`, `2m`, `500ms`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (use whole seconds, e.g. 15, or 15s)"))
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("expected key=value, got `{text}`")),
    }
}

fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        other => Err(format!("expected on or off, got `{other}`")),
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Healthcheck) = args.command {
        return healthcheck::run(args.listen, "/healthz", args.tls_cert.is_some());
    }
    // Every stream holds a socket: take the hard limit of open files, not the soft one.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sse-fanout: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    for warning in security_warnings(&args)? {
        tracing::warn!("{warning}");
    }
    let tls = tls(&args)?;
    let mut config = HubConfig::new(args.app_name.clone());
    if let Some(id) = &args.instance_id {
        config.instance_id = id.clone();
    }
    config.replay = (args.replay_events > 0).then(|| {
        let mut replay = ReplayConfig::default();
        replay.max_events = args.replay_events;
        replay.max_age = args.replay_age;
        replay.max_bytes = args.replay_bytes;
        replay
    });
    config.routing = match args.routing {
        RoutingKind::Broadcast => Routing::Broadcast,
        RoutingKind::Session => Routing::Session {
            linger: args.route_linger,
        },
    };
    let history = config.replay.filter(|_| args.broker_history);
    let backend = connect_backend(&args, &config, history).await?;
    config.accept_apps = if args.accept_apps.iter().any(|a| a == "*") {
        AcceptApps::Any
    } else if args.accept_apps.is_empty() {
        AcceptApps::Own
    } else {
        let mut apps = args.accept_apps.clone();
        apps.push(args.app_name.clone());
        AcceptApps::These(apps)
    };
    config.probe =
        nonzero(args.probe_interval).map(|interval| ProbeConfig::new(interval, args.probe_timeout));
    config.presence = (args.presence || args.presence_events.is_some()).then(|| {
        let presence = PresenceConfig::default()
            .interval(args.presence_interval.max(Duration::from_millis(100)))
            .linger(args.presence_linger);
        match &args.presence_events {
            Some(name) => presence.events(name.clone()),
            None => presence,
        }
    });
    config.heartbeat = nonzero(args.heartbeat);
    config.emitter_timeout = nonzero(args.emitter_timeout);
    config.queue_size = args.queue_size.max(1);
    config.max_stream_bytes = args.max_stream_bytes.max(1);
    config.retry = nonzero(args.retry);
    config.max_streams = (args.max_streams > 0).then_some(args.max_streams);
    config.max_streams_per_session =
        (args.max_streams_per_session > 0).then_some(args.max_streams_per_session);
    let hub = Hub::builder_arc(backend)
        .config(config)
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("could not start the hub: {e}"))?;

    let mut router_config = RouterConfig::default();
    router_config.stream_path = args.path.clone();
    router_config.publish_path = args.publish_path.clone();
    router_config.disconnect_path = args.disconnect_path.clone();
    router_config.publish_token = args.publish_token.clone();
    router_config.publish_client_certificate = tls
        .as_ref()
        .is_some_and(Tls::requires_publisher_certificates);
    router_config.max_publish_body = args.max_publish_body;
    router_config.publish_body_budget = args.publish_body_budget;
    router_config.max_event_names = args.max_event_names;
    router_config.metrics_path = Some("/metrics".to_owned());
    router_config.openapi_path = Some("/openapi.json".to_owned());
    if !args.cors_origins.is_empty() {
        router_config.cors = Some(Cors {
            allowed_origins: args.cors_origins.clone(),
            allow_credentials: args.cors_credentials,
        });
    }
    router_config.max_event_name_len = args.max_event_name_len;
    router_config.max_id_len = args.max_id_len;
    let page = DEMO_PAGE
        .replace("{{STREAM_PATH}}", &args.path)
        .replace("{{PUBLISH_PATH}}", &args.publish_path);
    let mut router = SseRouter::new(hub.clone())
        .config(router_config)
        .static_page("/", "text/html; charset=utf-8", page);
    let callout = callout(&args)?;
    if let Some(publishers) = publish_callout(&args)? {
        if args.jwt_publish_claim.is_some() {
            anyhow::bail!(
                "--publish-auth-url and --jwt-publish-claim are both set: a deployment \
                 authorizes publishers one way; leave one out"
            );
        }
        router = router.publish_callout(publishers);
    }
    router = match jwt_verifier(&args).await? {
        Some(_) if callout.is_some() => anyhow::bail!(
            "--auth-url and JWT sessions (--jwt-secret, --jwks-url, --jwks-file) are both set: \
             a deployment finds sessions one way; leave one out"
        ),
        Some(verifier) => {
            if let Some(claim) = &args.jwt_publish_claim {
                router = router.publish_jwt(verifier.clone(), claim);
            }
            let mut sessions = sse_fanout::JwtSessions::new(verifier);
            if let Some(claim) = &args.jwt_events_claim {
                sessions = sessions.events_claim(claim);
            }
            router.resolver(sessions)
        }
        None => match callout {
            Some(callout) => router.callout(callout),
            None => router.resolver(sse_fanout::DevSessions),
        },
    };

    let listener = listen(args.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(
        address = %listener.local_addr()?,
        backend = hub.backend_name(),
        tls = tls.is_some(),
        "sse-fanout listening; demo page at /"
    );
    if let Some(tls) = &tls {
        tokio::spawn(reload_on_sighup(tls.clone()));
    }
    let mut options = ServeOptions::default();
    options.head_timeout = args.head_timeout.max(Duration::from_millis(100));
    options.max_head_bytes = args.max_head_bytes;
    options.max_headers = args.max_headers;
    options.http2_keep_alive = args.http2_keep_alive.max(Duration::from_secs(1));
    options.idle_timeout = args.idle_timeout.max(Duration::from_millis(100));
    options.tls = tls;
    sse_fanout::hyper::serve_with(listener, router, shutdown_signal(), options).await?;
    hub.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Connects the chosen backend from the build's table ([`sse_fanout::BACKENDS`]); `history` is
/// what it keeps in the broker (`None`: nothing).
async fn connect_backend(
    args: &Args,
    config: &HubConfig,
    history: Option<ReplayConfig>,
) -> anyhow::Result<Arc<dyn FanoutBackend>> {
    let Some(connector) = sse_fanout::BACKENDS.iter().find(|c| c.name == args.backend) else {
        let names: Vec<&str> = sse_fanout::BACKENDS.iter().map(|c| c.name).collect();
        anyhow::bail!(
            "this build has no {} backend (it has: {}); the brokers' backends are cargo \
             features of sse-fanout: rebuild with `--features {}`",
            args.backend,
            names.join(", "),
            args.backend
        )
    };
    let mut settings = BackendSettings::new(args.channel.clone());
    settings.url = args.backend_url.clone();
    settings.app_name = args.app_name.clone();
    settings.instance_id = config.instance_id.clone();
    settings.history = history;
    settings.routing = config.routing;
    settings.options = backend_options(args);
    Ok((connector.connect)(settings).await?)
}

/// `--backend-option` and the shorthand flags that stand for one.
fn backend_options(args: &Args) -> std::collections::BTreeMap<String, String> {
    let mut options: std::collections::BTreeMap<String, String> =
        args.backend_options.iter().cloned().collect();
    if let Some(partitions) = args.route_partitions {
        options.insert("route-partitions".into(), partitions.to_string());
    }
    if let Some(delivery) = args.rabbit_delivery {
        let delivery = match delivery {
            RabbitDelivery::Stream => "stream",
            RabbitDelivery::Queue => "queue",
        };
        options.insert("delivery".into(), delivery.into());
    }
    if args.create_topic {
        options.insert("create-topic".into(), "true".into());
    }
    if let Some(partitions) = args.topic_partitions {
        options.insert("topic-partitions".into(), partitions.to_string());
    }
    if let Some(replication) = args.topic_replication {
        options.insert("topic-replication".into(), replication.to_string());
    }
    for (key, value) in &args.kafka_config {
        options.insert(format!("librdkafka.{key}"), value.clone());
    }
    options
}

/// A listener with a backlog deep enough for a reconnect storm (the kernel caps it at somaxconn).
/// What the configuration leaves open, said at startup; development mode beyond loopback is
/// refused unless `--allow-dev-sessions` says it is meant.
/// The JWT verifier of the flags: `None` in development mode (no secret, no JWKS).
async fn jwt_verifier(args: &Args) -> anyhow::Result<Option<sse_fanout::hyper::JwtVerifier>> {
    use sse_fanout::hyper::{JwtKeys, JwtVerifier};
    let keys = if let Some(secret) = &args.jwt_secret {
        JwtKeys::hs256(secret)
    } else if let Some(url) = &args.jwks_url {
        let ca = match &args.jwks_ca_file {
            Some(file) => Some(
                std::fs::read(file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?,
            ),
            None => None,
        };
        JwtKeys::jwks_url_trusting(url.clone(), ca.as_deref()).await?
    } else if let Some(file) = &args.jwks_file {
        JwtKeys::jwks_file(file.clone()).await?
    } else {
        if args.jwt_events_claim.is_some() || args.jwt_publish_claim.is_some() {
            anyhow::bail!("--jwt-events-claim and --jwt-publish-claim need --jwt-secret or a JWKS");
        }
        return Ok(None);
    };
    Ok(Some(
        JwtVerifier::new(keys)
            .issuers(args.jwt_issuers.clone())
            .audiences(args.jwt_audiences.clone())
            .leeway(args.jwt_leeway),
    ))
}

fn security_warnings(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    let verified = args.jwt_secret.is_some()
        || args.jwks_url.is_some()
        || args.jwks_file.is_some()
        || args.auth_url.is_some();
    if !verified {
        if !args.listen.ip().is_loopback() && !args.allow_dev_sessions {
            anyhow::bail!(
                "development mode (no --jwt-secret: clients name their own sessions) on {}, \
                 beyond loopback: anyone who reaches it can read any session's events; set \
                 --jwt-secret, or --allow-dev-sessions if that is meant",
                args.listen
            );
        }
        warnings.push(
            "development mode: no --jwt-secret, so clients name their own session and anyone \
             can read any session's events"
                .to_owned(),
        );
    }
    if args.publish_token.is_none()
        && args.jwt_publish_claim.is_none()
        && args.publish_auth_url.is_none()
    {
        warnings.push(
            "no --publish-token: anyone who reaches POST /sse/publish can publish".to_owned(),
        );
    }
    if args.cors_credentials && args.cors_origins.iter().any(|o| o == "*") {
        warnings.push(
            "--cors-origin '*' with --cors-credentials: credentials go only to the origins \
             listed by name; '*' lets any other site read streams without them"
                .to_owned(),
        );
    }
    Ok(warnings)
}

/// The auth callout of `--auth-url` and its flags; `None` without it.
fn callout(args: &Args) -> anyhow::Result<Option<CalloutSessions>> {
    let Some(url) = &args.auth_url else {
        return Ok(None);
    };
    let config = callout_config(
        args,
        url,
        &args.auth_forward_headers,
        "--auth-forward-header",
    )?;
    Ok(Some(CalloutSessions::new(config)))
}

/// The publishers' callout of `--publish-auth-url`; `None` without it.
fn publish_callout(args: &Args) -> anyhow::Result<Option<CalloutSessions>> {
    let Some(url) = &args.publish_auth_url else {
        return Ok(None);
    };
    let config = callout_config(
        args,
        url,
        &args.publish_auth_forward_headers,
        "--publish-auth-forward-header",
    )?;
    Ok(Some(CalloutSessions::for_publishers(config)))
}

/// A callout of `url` forwarding `headers` (the default ones when empty), as the `--auth-*`
/// flags say.
fn callout_config(
    args: &Args,
    url: &str,
    headers: &[String],
    flag: &str,
) -> anyhow::Result<CalloutConfig> {
    let mut config = CalloutConfig::new(url);
    if !headers.is_empty() {
        config = config
            .forward_header_names(headers)
            .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    }
    config.forward_cookies = args.auth_forward_cookies.clone();
    config.timeout = args.auth_timeout.max(Duration::from_millis(10));
    config.cache_ttl = args.auth_cache_ttl;
    config.max_entries = args.auth_cache_entries.max(1);
    config.max_concurrent = args.auth_max_concurrent.max(1);
    Ok(config)
}

/// The TLS of `--tls-cert` and `--tls-key`, read and checked now so that a bad file stops the
/// start with its name; `None` without them (plaintext).
fn tls(args: &Args) -> anyhow::Result<Option<Tls>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let mut files = TlsFiles::new(cert, key);
    if let Some(ca) = &args.publish_client_ca {
        files = files.publish_client_ca(ca);
    }
    Ok(Some(Tls::load(files)?))
}

/// Reads the certificate and key again on every SIGHUP.
async fn reload_on_sighup(tls: Tls) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(error) => {
                    tracing::warn!(%error, "SIGHUP: TLS certificate not reloaded; the one in use stays");
                }
            }
        }
    }
    #[cfg(not(unix))]
    drop(tls);
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
