//! The deployment files of `deploy/`, run for real: Debian's nginx and HAProxy with the project's
//! configurations in front of a hub process, the hub's container image on a Docker engine with
//! host networking, and the Kubernetes manifest checked against Kubernetes' schema.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::brokers::{self, Broker};
use common::cluster::{HubProcess, free_port, wait_healthy};
use common::{SseClient, client};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `deploy/{file}` with each `(from, to)` replaced; `from` must occur in it exactly once, so a
/// change to the file cannot leave the test running something else than what it ships.
fn deploy_file(file: &str, replacements: &[(&str, String)]) -> String {
    let mut text = std::fs::read_to_string(repo().join("deploy").join(file)).unwrap();
    for (from, to) in replacements {
        assert_eq!(
            text.matches(from).count(),
            1,
            "`{from}` once in deploy/{file}"
        );
        text = text.replace(from, to);
    }
    text
}

/// Whether `program --version`-like `probe` runs; says loudly that the test cannot run if not.
fn installed(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        brokers::not_installed(program);
    }
    ok
}

/// A proxy process of the test's own, stopped (by its pid) when dropped.
struct Proxy {
    port: u16,
    child: Child,
    _dir: TempDir,
}

impl Drop for Proxy {
    /// SIGTERM to the proxy's main process, which stops its workers (a SIGKILL would leave
    /// nginx's workers running), then SIGKILL if it is still there after 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` with its output in `{dir}/output.log` (its pipes would otherwise hold the test
/// harness's output open).
fn spawn_logged(mut command: Command, dir: &TempDir) -> Child {
    let log = std::fs::File::create(dir.0.join("output.log")).unwrap();
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(common::unique(name));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a proxy on a free port with `deploy/{file}` (its `replacements` for that port) written
/// into a directory of its own; `command` gets the directory and the configuration's path.
fn start_proxy(
    file: &str,
    replacements: &[(&str, String)],
    port: u16,
    command: impl FnOnce(&Path, &Path) -> Command,
) -> Proxy {
    let dir = TempDir::new(file);
    let config = dir.0.join(file);
    std::fs::write(&config, deploy_file(file, replacements)).unwrap();
    let child = spawn_logged(command(&dir.0, &config), &dir);
    Proxy {
        port,
        child,
        _dir: dir,
    }
}

fn nginx(hub: u16) -> Proxy {
    let port = free_port();
    let replacements = [
        ("listen 80;", format!("listen 127.0.0.1:{port};")),
        ("server 127.0.0.1:8080;", format!("server 127.0.0.1:{hub};")),
    ];
    start_proxy("nginx.conf", &replacements, port, |dir, config| {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let mut command = Command::new("nginx");
        command
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("logs/error.log"));
        command.arg("-c").arg(config).arg("-g");
        command.arg(format!(
            "daemon off; pid {}/nginx.pid;",
            dir.to_string_lossy()
        ));
        command
    })
}

fn haproxy(hub: u16) -> Proxy {
    let port = free_port();
    let replacements = [
        ("bind :80", format!("bind 127.0.0.1:{port}")),
        ("127.0.0.1:8080 check", format!("127.0.0.1:{hub} check")),
    ];
    start_proxy("haproxy.cfg", &replacements, port, |_, config| {
        let mut command = Command::new("haproxy");
        command.arg("-db").arg("-f").arg(config);
        command
    })
}

/// How long a stream stays idle behind a proxy: longer than the proxies' 45 s timeouts in
/// `deploy/`, so only the hub's heartbeat (15 s, its default) keeps it open.
const IDLE: Duration = Duration::from_secs(50);

/// Streams and publishes through the proxy on `port`: events arrive within a few ms, and a
/// stream left idle past the proxy's timeouts still delivers.
async fn through_the_proxy(name: &str, port: u16, hub: &HubProcess) {
    wait_healthy(port).await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let mut stream = SseClient::connect(&url("/sse/event-stream?eventName=tick"), &[]).await;
    assert_eq!(stream.status, 200, "{name}");
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    hub.wait_streams(1).await;

    let http = client();
    let mut latencies = Vec::new();
    for n in 0..50 {
        let sent = Instant::now();
        let response = http
            .post(url("/sse/publish"))
            .json(&serde_json::json!({"eventName": "tick", "payload": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{name}: publish through the proxy");
        let event = stream.next().await;
        latencies.push(sent.elapsed());
        assert_eq!(event.data, n.to_string(), "{name}");
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let worst = latencies[latencies.len() - 1];
    eprintln!("{name}: publish to event through the proxy: median {median:?}, worst {worst:?}");
    // A proxy that buffered the stream would hold events back for seconds (or until 4-8 KiB).
    assert!(
        median < Duration::from_millis(20),
        "{name}: median {median:?}"
    );
    assert!(
        worst < Duration::from_millis(500),
        "{name}: worst {worst:?}"
    );

    // Idle past the proxy's timeouts: the heartbeat comments keep the stream open.
    assert!(
        stream.next_within(IDLE).await.is_none(),
        "{name}: nothing was published, yet an event came"
    );
    hub.publish("tick", None, serde_json::json!("after the idle time"))
        .await;
    let event = stream.next().await;
    assert_eq!(event.data, "after the idle time", "{name}");
}

#[tokio::test]
async fn nginx_with_the_shipped_configuration_passes_events_at_once_and_keeps_idle_streams() {
    if !installed("nginx", &["-v"]) {
        return;
    }
    let hub = HubProcess::ready(free_port(), &[]).await;
    let proxy = nginx(hub.port);
    through_the_proxy("nginx", proxy.port, &hub).await;
}

#[tokio::test]
async fn haproxy_with_the_shipped_configuration_passes_events_at_once_and_keeps_idle_streams() {
    if !installed("haproxy", &["-v"]) {
        return;
    }
    let hub = HubProcess::ready(free_port(), &[]).await;
    let proxy = haproxy(hub.port);
    through_the_proxy("haproxy", proxy.port, &hub).await;
}

#[test]
fn the_kubernetes_manifests_match_the_kubernetes_schema() {
    let validate = repo().join("tests/python/.venv/bin/kubernetes-validate");
    if !validate.exists() {
        brokers::not_installed("kubernetes-validate (tests/python/.venv)");
        return;
    }
    for name in ["kubernetes.yaml", "kubernetes-tls.yaml"] {
        let manifest = repo().join("deploy").join(name);
        let output = Command::new(&validate)
            .args(["--kubernetes-version", "1.31.0", "--strict"])
            .arg(&manifest)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name}: {report}");
        for kind in ["deployment", "service", "poddisruptionbudget"] {
            assert!(
                report.contains(&format!("passed for resource {kind}/")),
                "{name}: {report}"
            );
        }
        // What the manifest promises besides its schema: probes on /healthz, a grace period
        // above the hub's drain (10 s) plus the preStop pause, the broker's URL from a Secret.
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert_eq!(
            text.matches("path: /healthz").count(),
            2,
            "{name}: readiness and liveness"
        );
        let grace: u32 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            grace > 10 + 5,
            "{name}: terminationGracePeriodSeconds {grace}"
        );
        assert!(text.contains("secretKeyRef: { name: sse-fanout, key: backend-url }"));
        if name.contains("tls") {
            // The probes speak HTTPS, and the certificate comes from a TLS Secret's files.
            assert_eq!(text.matches("scheme: HTTPS").count(), 2, "{name}");
            assert!(text.contains("secretName: sse-fanout-tls"), "{name}");
            assert!(text.contains("/etc/sse-fanout/tls/tls.crt"), "{name}");
        }
    }
}

/// A Docker engine answers (`bash scripts/containers.sh` installs and starts one).
fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The container named here, removed when dropped (a failing test leaves none running).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// On Redis: the hub in the image reaches a broker over the host's network.
#[cfg(feature = "redis")]
#[tokio::test]
async fn the_container_image_is_healthy_streams_and_stops_gracefully() {
    if !docker_answers() {
        brokers::not_installed("a Docker engine (bash scripts/containers.sh)");
        return;
    }
    let Some(redis) = brokers::url(Broker::Redis).await else {
        brokers::missing("redis");
        return;
    };
    // The image of scripts/image.sh, around the hub this test run built (the release build
    // would add minutes), on the project's Debian base (no registry is reachable here).
    let tag = "sse-fanout-test/hub:latest";
    let built = Command::new("bash")
        .arg(repo().join("scripts/image.sh"))
        .env("SSE_IMAGE_BINARY", env!("CARGO_BIN_EXE_sse-fanout"))
        .env("SSE_IMAGE_TAG", tag)
        .env("SSE_IMAGE_BASE", "sse-fanout-test/debian:bookworm")
        .status()
        .unwrap();
    assert!(built.success(), "scripts/image.sh failed");
    assert_eq!(
        docker(&["image", "inspect", "-f", "{{.Config.User}}", tag]),
        "65532:65532"
    );

    let port = free_port();
    let name = common::unique("sse-fanout-hub");
    let container = Container(name.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "sse-fanout-test",
        "--network",
        "host",
        "-e",
        &format!("SSE_FANOUT_LISTEN=127.0.0.1:{port}"),
        "-e",
        "SSE_FANOUT_BACKEND=redis",
        "-e",
        &format!("SSE_FANOUT_BACKEND_URL={redis}"),
        "-e",
        &format!("SSE_FANOUT_CHANNEL={}", common::unique("image")),
        tag,
    ]);
    wait_healthy(port).await;
    assert_eq!(
        docker(&["exec", &name, "id", "-u"]),
        "65532",
        "runs as non-root"
    );

    // Docker's own HEALTHCHECK (the hub's `healthcheck` command) turns the container healthy.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let health = docker(&["inspect", "-f", "{{.State.Health.Status}}", &name]);
        if health == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "health is {health}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let url = format!("http://127.0.0.1:{port}/sse/event-stream?eventName=news&sessionId=s1");
    let mut stream = SseClient::connect(&url, &[]).await;
    assert_eq!(stream.status, 200);
    let response = client()
        .post(format!("http://127.0.0.1:{port}/sse/publish"))
        .json(&serde_json::json!({"eventName": "news", "sessionId": "s1", "payload": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(stream.next().await.data, r#"{"n":1}"#);

    // `docker stop` sends SIGTERM to the hub (PID 1): it tells the stream to come back, ends it,
    // and exits 0 well before Docker's 20 s would turn to SIGKILL.
    let stopping = Instant::now();
    let stop = tokio::task::spawn_blocking({
        let name = name.clone();
        move || docker(&["stop", "-t", "20", &name])
    });
    let rest = stream.until_end().await;
    stop.await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopping.elapsed()
    );
    assert!(rest.iter().all(|e| e.event != "news"), "{rest:?}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]),
        "0"
    );
    let logs = Command::new("docker")
        .args(["logs", &name])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("stopped"), "{logs}");
    drop(container);
}
