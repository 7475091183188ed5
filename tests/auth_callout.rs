//! Sessions from the application (`CalloutSessions`, the hub's `--auth-url`): a real HTTP
//! application in the test (axum) that authorizes by cookie; streams get the session it names
//! and only the event names it allows; its refusals reach the client; a slow, dead or broken
//! application gets the client `503` or `502` while cached credentials keep working; many
//! requests with one credential cost one callout.
#![allow(clippy::unwrap_used)]

mod common;

#[path = "../examples/cookie_app.rs"]
#[allow(dead_code, missing_docs, unreachable_pub)]
mod cookie_app;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::{SseClient, TestServer, WAIT, client};
use serde_json::json;
use sse_fanout::hyper::{CalloutConfig, CalloutSessions};
use sse_fanout::{LocalBackend, SendSseEvent};

/// The application: who is logged in, by the `app_session` cookie; counts its calls.
#[derive(Clone, Default)]
struct App {
    calls: Arc<AtomicUsize>,
    /// Users who logged out: their cookie is refused from then on.
    logged_out: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn authorize(State(app): State<App>, headers: HeaderMap) -> axum::response::Response {
    app.calls.fetch_add(1, Ordering::SeqCst);
    let cookies = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let session = cookies
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "app_session")
        .map(|(_, value)| value.to_owned());
    if session
        .as_ref()
        .is_some_and(|s| app.logged_out.lock().unwrap().contains(s))
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "logged out"})),
        )
            .into_response();
    }
    match session.as_deref() {
        None => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "log in first"})),
        )
            .into_response(),
        Some("alice") => axum::Json(json!({
            "sessionId": "alice",
            "eventNames": ["orders.*"],
            "cacheSeconds": 60,
        }))
        .into_response(),
        Some("banned") => StatusCode::FORBIDDEN.into_response(),
        Some("slow") => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            axum::Json(json!({"sessionId": "slow"})).into_response()
        }
        Some("garbage") => (StatusCode::OK, "<html>login page</html>").into_response(),
        // A login that ends two seconds from now.
        Some("brief") => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            axum::Json(json!({"sessionId": "brief", "expiresAt": now.as_secs() + 2}))
                .into_response()
        }
        Some("expired") => {
            axum::Json(json!({"sessionId": "expired", "expiresAt": 1})).into_response()
        }
        Some("crash") => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        // Tells what it was sent, for the forwarding test.
        Some("echo") => axum::Json(json!({"sessionId": cookies})).into_response(),
        Some(user) => {
            // Any other user: a little work, so that concurrent requests overlap.
            tokio::time::sleep(Duration::from_millis(200)).await;
            axum::Json(json!({"sessionId": user})).into_response()
        }
    }
}

/// The application on a loopback port: its URL and its call count.
async fn start_app() -> (String, App) {
    let app = App::default();
    let router = axum::Router::new()
        .route("/auth", axum::routing::get(authorize))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, app)
}

async fn hub(config: CalloutConfig) -> (TestServer, CalloutSessions) {
    let callout = CalloutSessions::new(config);
    let server = TestServer::start_with(Arc::new(LocalBackend::new()), |b| b, {
        let callout = callout.clone();
        move |r| r.callout(callout)
    })
    .await;
    (server, callout)
}

/// A stream request with `cookie`: the status and the JSON answer of a refusal.
async fn open(
    server: &TestServer,
    query: &str,
    cookie: &str,
) -> (u16, serde_json::Value, Option<String>) {
    let response = client()
        .get(server.url(&format!("/sse/event-stream?{query}")))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    if status == 200 {
        return (status, serde_json::Value::Null, retry_after);
    }
    (status, response.json().await.unwrap(), retry_after)
}

#[tokio::test]
async fn the_application_names_the_session_and_the_event_names_it_allows() {
    let (url, app) = start_app().await;
    let (server, _) = hub(CalloutConfig::new(url)).await;
    let mut alice = SseClient::connect(
        &server.url("/sse/event-stream?eventName=orders.created"),
        &[("cookie", "theme=dark; app_session=alice")],
    )
    .await;
    assert_eq!(alice.status, 200);
    server.wait_for_streams(1).await;
    server
        .hub
        .publish(SendSseEvent::new("orders.created", json!(1)).to_session("alice"))
        .await
        .unwrap();
    assert_eq!(alice.next().await.data, "1");

    // Outside what the application allows: 403. Not logged in: the application's 401 and
    // message. Refused by it: its 403.
    let (status, _, _) = open(&server, "eventName=admin", "app_session=alice").await;
    assert_eq!(status, 403);
    let (status, body, _) = open(&server, "eventName=orders.created", "").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("log in first"))
    );
    let (status, _, _) = open(&server, "eventName=orders.created", "app_session=banned").await;
    assert_eq!(status, 403);
    assert!(app.calls.load(Ordering::SeqCst) >= 4);
}

/// 2 000 stream requests at once with one cookie, then 2 000 more: one callout in all.
#[tokio::test]
async fn many_requests_with_one_credential_cost_one_callout() {
    let (url, app) = start_app().await;
    let (server, callout) = hub(CalloutConfig::new(url)).await;
    let mut requests = tokio::task::JoinSet::new();
    let opened = Arc::new(AtomicUsize::new(0));
    let http = client();
    // Browsers coming back after a deploy, in waves.
    for _ in 0..5 {
        let semaphore = Arc::new(tokio::sync::Semaphore::new(200));
        for _ in 0..2000 {
            let url = server.url("/sse/event-stream?eventName=e");
            let semaphore = semaphore.clone();
            let opened = opened.clone();
            let http = http.clone();
            requests.spawn(async move {
                let _permit = semaphore.acquire().await.unwrap();
                let response = http
                    .get(url)
                    .header("cookie", "app_session=bob")
                    .send()
                    .await
                    .unwrap();
                if response.status() == 200 {
                    opened.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        while let Some(done) = requests.join_next().await {
            done.unwrap();
        }
    }
    assert_eq!(opened.load(Ordering::SeqCst), 10_000);
    assert_eq!(app.calls.load(Ordering::SeqCst), 1, "callouts");
    let stats = callout.stats();
    assert_eq!(stats.allowed, 1);
    assert_eq!(stats.cache_hits + stats.joined, 9_999, "{stats:?}");
}

/// A slow application: a credential it answered before keeps working from the cache; a new one
/// gets `503` with `Retry-After` after the timeout, and other requests are not held up.
/// A dead one: `503`. One that answers outside the contract: `502`. Nothing panics.
#[tokio::test]
async fn a_slow_dead_or_broken_application_gets_clear_errors_while_cached_credentials_work() {
    let (url, _app) = start_app().await;
    let mut config = CalloutConfig::new(url);
    config.timeout = Duration::from_millis(500);
    let (server, callout) = hub(config).await;
    let (status, _, _) = open(&server, "eventName=orders.x", "app_session=alice").await;
    assert_eq!(status, 200);

    let started = std::time::Instant::now();
    let slow = tokio::spawn({
        let url = server.url("/sse/event-stream?eventName=e");
        async move {
            client()
                .get(url)
                .header("cookie", "app_session=slow")
                .send()
                .await
                .unwrap()
        }
    });
    // Meanwhile the cached credential is answered at once.
    let (status, _, _) = open(&server, "eventName=orders.x", "app_session=alice").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let slow = slow.await.unwrap();
    assert_eq!(slow.status().as_u16(), 503);
    assert_eq!(slow.headers()["retry-after"], "5");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    let (status, body, _) = open(&server, "eventName=e", "app_session=garbage").await;
    assert_eq!((status, body["error"].as_str()), (502, Some("bad_gateway")));
    let (status, _, retry) = open(&server, "eventName=e", "app_session=crash").await;
    assert_eq!((status, retry.as_deref()), (503, Some("5")));
    let stats = callout.stats();
    assert_eq!((stats.bad_answer, stats.unavailable), (1, 2), "{stats:?}");

    // The application gone: 503, and the cached credential still works.
    let mut config = CalloutConfig::new("http://127.0.0.1:1/auth");
    config.timeout = Duration::from_millis(500);
    let (dead, _) = hub(config).await;
    let (status, body, retry) = open(&dead, "eventName=e", "app_session=carol").await;
    assert_eq!((status, retry.as_deref()), (503, Some("5")), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("did not answer"),
        "{body}"
    );
    server.stop().await;
    dead.stop().await;
}

/// Only the named cookies reach the application, and only the named headers.
#[tokio::test]
async fn only_the_configured_cookies_are_forwarded() {
    let (url, _app) = start_app().await;
    let mut config = CalloutConfig::new(url)
        .forward_header_names(&["cookie"])
        .unwrap();
    config.forward_cookies = vec!["app_session".to_owned()];
    let (server, _) = hub(config).await;
    let mut stream = SseClient::connect(
        &server.url("/sse/event-stream?eventName=e"),
        &[("cookie", "other_app=secret; app_session=echo; tracking=1")],
    )
    .await;
    assert_eq!(stream.status, 200);
    server.wait_for_streams(1).await;
    // The application named the session after the cookies it got.
    server
        .hub
        .publish(SendSseEvent::new("e", json!("seen")).to_session("app_session=echo"))
        .await
        .unwrap();
    let event = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert_eq!(event.data, "seen");
}

/// The hub binary refuses `--auth-url` beside JWT sessions.
#[tokio::test]
async fn the_hub_binary_refuses_a_callout_beside_jwt_sessions() {
    let refused = |args: &'static [&'static str]| async move {
        let output = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
                .args(["--listen", "127.0.0.1:0", "--jwt-secret", "s3cret"])
                .args(args)
                .env("RUST_LOG", "error")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = refused(&["--auth-url", "http://127.0.0.1:1/auth"]).await;
    assert!(stderr.contains("--auth-url and JWT sessions"), "{stderr}");
    let stderr = refused(&[
        "--publish-auth-url",
        "http://127.0.0.1:1/auth",
        "--jwt-publish-claim",
        "sse_publish",
    ])
    .await;
    assert!(
        stderr.contains("--publish-auth-url and --jwt-publish-claim"),
        "{stderr}"
    );
}

/// A request from another site carries the visitor's cookie, but the application gets it only
/// when CORS lets that origin send credentials; a request from the hub's own origin always.
#[tokio::test]
async fn cookies_from_another_site_reach_the_application_only_if_cors_allows_its_credentials() {
    let (url, _app) = start_app().await;
    let callout = CalloutSessions::new(CalloutConfig::new(url));
    let server = TestServer::start_with(
        Arc::new(LocalBackend::new()),
        |b| b,
        move |r| {
            r.callout(callout).config(common::router_config(|c| {
                c.cors = Some(sse_fanout::hyper::Cors {
                    allowed_origins: vec!["http://app.example".to_owned(), "*".to_owned()],
                    allow_credentials: true,
                });
            }))
        },
    )
    .await;
    let open_from = |origin: String| {
        let url = server.url("/sse/event-stream?eventName=orders.created");
        async move {
            client()
                .get(url)
                .header("cookie", "app_session=alice")
                .header("origin", origin)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Let in by `*`, which never gets credentials: the application saw no cookie.
    assert_eq!(open_from("http://elsewhere.example".to_owned()).await, 401);
    assert_eq!(open_from("http://app.example".to_owned()).await, 200);
    assert_eq!(open_from(format!("http://{}", server.addr)).await, 200);
}

/// Logout: the application forgets the user and the hub disconnects the session. The stream
/// gets the goodbye and ends, and the same cookie coming back is asked about again (its cached
/// answer, good for a minute, was dropped) and refused.
#[tokio::test]
async fn a_disconnected_session_is_asked_about_again_not_let_in_from_the_cache() {
    let (url, app) = start_app().await;
    let (server, _) = hub(CalloutConfig::new(url)).await;
    let cookie = [("cookie", "app_session=carol")];
    let url = server.url("/sse/event-stream?eventName=e");
    let mut first = SseClient::connect(&url, &cookie).await;
    assert_eq!(first.status, 200);
    // From the cache: the application is asked once.
    let second = SseClient::connect(&url, &cookie).await;
    assert_eq!(second.status, 200);
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
    drop(second);

    app.logged_out.lock().unwrap().push("carol".to_owned());
    server
        .hub
        .disconnect(sse_fanout::Disconnect::session("carol").goodbye("logged-out", json!(null)))
        .await
        .unwrap();
    assert_eq!(first.next().await.event, "logged-out");
    assert!(first.until_end().await.is_empty());
    let (status, body, _) = open(&server, "eventName=e", "app_session=carol").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("logged out"))
    );
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
}

/// An answer with `expiresAt`: the stream ends then (the client reconnects and is asked again),
/// and the answer is not reused past it. One already past is a `401`.
#[tokio::test]
async fn a_stream_ends_when_the_applications_login_expires() {
    let (url, app) = start_app().await;
    let (server, _) = hub(CalloutConfig::new(url)).await;
    let url = server.url("/sse/event-stream?eventName=e");
    let opened = std::time::Instant::now();
    let mut brief = SseClient::connect(&url, &[("cookie", "app_session=brief")]).await;
    assert_eq!(brief.status, 200);
    brief.until_end().await;
    let lasted = opened.elapsed();
    // `expiresAt` is in whole seconds: two from now is one to two seconds away.
    assert!(
        lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(4),
        "{lasted:?}"
    );
    let calls = app.calls.load(Ordering::SeqCst);
    let again = SseClient::connect(&url, &[("cookie", "app_session=brief")]).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        app.calls.load(Ordering::SeqCst),
        calls + 1,
        "asked again, not answered from the cache past the expiry"
    );
    let (status, _, _) = open(&server, "eventName=e", "app_session=expired").await;
    assert_eq!(status, 401);
}

/// The application's rules for publishers: a service token it knows may publish the names it
/// lists; one it does not know is refused; the publish token still works; a disconnect needs a
/// grant of every name. One callout per credential, as for streams.
#[tokio::test]
async fn the_application_authorizes_publishers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let publishers = axum::Router::new().route(
        "/publish-auth",
        axum::routing::get({
            let calls = calls.clone();
            move |headers: HeaderMap| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                assert_eq!(headers["x-sse-purpose"], "publish");
                match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                    Some("Bearer orders-service") => {
                        axum::Json(json!({"eventNames": ["orders.*"]})).into_response()
                    }
                    Some("Bearer admin") => axum::Json(json!({})).into_response(),
                    Some("Bearer broken") => (StatusCode::OK, "yes").into_response(),
                    _ => (
                        StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"message": "unknown service"})),
                    )
                        .into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/publish-auth", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, publishers).await });
    let callout = CalloutSessions::for_publishers(CalloutConfig::new(url));
    let server = TestServer::start_with(Arc::new(LocalBackend::new()), |b| b, {
        let callout = callout.clone();
        move |r| {
            r.resolver(sse_fanout::DevSessions)
                .publish_callout(callout)
                .config(common::router_config(|c| {
                    c.publish_token = Some("operator-token".to_owned());
                }))
        }
    })
    .await;
    let post = |path: &'static str, token: Option<&'static str>, body: serde_json::Value| {
        let url = server.url(path);
        async move {
            let mut request = client().post(url).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, body)
        }
    };
    let mut stream = server.stream("eventName=orders.created&sessionId=s1").await;
    server.wait_for_streams(1).await;
    let created = json!({"eventName": "orders.created", "sessionId": "s1", "payload": 1});
    for _ in 0..3 {
        let (status, _) = post("/sse/publish", Some("orders-service"), created.clone()).await;
        assert_eq!(status, 202);
        assert_eq!(stream.next().await.data, "1");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one callout for one credential"
    );
    let admin_event = json!({"eventName": "admin.audit", "payload": 1});
    let (status, _) = post("/sse/publish", Some("orders-service"), admin_event.clone()).await;
    assert_eq!(status, 403, "a name outside the application's answer");
    let (status, body) = post("/sse/publish", Some("intruder"), created.clone()).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("unknown service"))
    );
    let (status, _) = post("/sse/publish", None, created.clone()).await;
    assert_eq!(status, 401);
    let (status, body) = post("/sse/publish", Some("broken"), created.clone()).await;
    assert_eq!((status, body["error"].as_str()), (502, Some("bad_gateway")));
    assert_eq!(
        post("/sse/publish", Some("admin"), admin_event).await.0,
        202
    );
    let calls_before = calls.load(Ordering::SeqCst);
    assert_eq!(
        post("/sse/publish", Some("operator-token"), created)
            .await
            .0,
        202,
        "the publish token is not asked about"
    );
    assert_eq!(calls.load(Ordering::SeqCst), calls_before);
    assert_eq!(stream.next().await.data, "1");

    let leave = json!({"sessionId": "s1", "eventName": "bye"});
    assert_eq!(
        post("/sse/disconnect", Some("orders-service"), leave.clone())
            .await
            .0,
        403
    );
    assert_eq!(post("/sse/disconnect", Some("admin"), leave).await.0, 202);
    assert_eq!(stream.next().await.event, "bye");
    let stats = server.router.stats().publish_callout.unwrap();
    assert_eq!(
        (stats.allowed, stats.refused, stats.bad_answer),
        (2, 2, 1),
        "{stats:?}"
    );
}

/// In Chromium, the cookie-session example application (`examples/cookie_app.rs`): its page (its
/// own origin) opens an `EventSource` to the hub (another origin, `withCredentials`). Before
/// logging in the hub refuses it (the application says 401) and the browser gives up; after
/// logging in through the application's form, the stream opens with the application's cookie and
/// gets the event the application publishes for its user; its logout disconnects the session, and
/// the goodbye makes the page close the stream.
#[tokio::test]
async fn a_browser_logged_in_to_the_application_gets_its_sessions_events() {
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/login.mjs");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let modules = script.with_file_name("node_modules/playwright-core");
    if !std::path::Path::new(&chromium).exists() || !modules.exists() {
        common::brokers::not_installed("Chromium and playwright-core (tests/browser)");
        return;
    }
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_origin = format!("http://{}", app_listener.local_addr().unwrap());
    let callout = CalloutSessions::new(CalloutConfig::new(format!(
        "{app_origin}/internal/sse-auth"
    )));
    let server = TestServer::start_with(Arc::new(LocalBackend::new()), |b| b, {
        let app_origin = app_origin.clone();
        move |r| {
            r.callout(callout).config(common::router_config(|c| {
                c.publish_token = Some("dev-token".to_owned());
                c.cors = Some(sse_fanout::hyper::Cors {
                    allowed_origins: vec![app_origin],
                    allow_credentials: true,
                });
            }))
        }
    })
    .await;
    let app = cookie_app::app(cookie_app::Hub {
        url: server.url(""),
        token: "dev-token".to_owned(),
    });
    tokio::spawn(async move { axum::serve(app_listener, app).await });

    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(&script)
            .env("APP_URL", &app_origin)
            .env("CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser finished within 90 s")
    .expect("node runs the browser tests");
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [
            "REFUSED 2",
            "OPENED",
            r#"RECEIVED {"order":7}"#,
            r#"CLOSED {"reason":"logout"} 2"#
        ],
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success());
    server.wait_for_streams(0).await;
    assert_eq!(server.hub.stats().closed_disconnected, 1);
}
