//! TLS in the server: HTTP/2 and HTTP/1.1 by ALPN over real sockets, with certificates from a CA
//! each test makes; a certificate rotated under an open stream; keys of every kind; startup
//! errors that name the file; publishing that needs a client certificate; the health check
//! command over TLS.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{SseClient, TestServer, WAIT};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::json;
use sse_fanout::LocalBackend;
use sse_fanout::hyper::{ServeOptions, Tls, TlsError, TlsFiles};

/// A CA of the test's own.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A server certificate for localhost and 127.0.0.1, valid now, with a key of `alg`.
    fn server(&self, alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        self.sign(params, alg)
    }

    /// A client certificate (for publishing).
    fn client(&self) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "publisher");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    fn sign(
        &self,
        params: CertificateParams,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> (String, String) {
        let key = KeyPair::generate_for(alg).unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A directory of the test's own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(common::unique(&format!("sse-tls-{name}")));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        // Written beside and renamed, as cert-manager and certbot swap files: a reader never sees
        // half a file.
        let partial = self.0.join(format!("{name}.partial"));
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test's directory, its CA, and a server certificate for localhost (ECDSA P-256) that the CA
/// signed, written as `cert.pem` and `key.pem`.
struct Site {
    _dir: Dir,
    ca: Ca,
    files: TlsFiles,
}

impl Site {
    fn new(name: &str) -> Site {
        let dir = Dir::new(name);
        let ca = Ca::new("test CA");
        let (cert, key) = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256);
        let files = TlsFiles::new(dir.write("cert.pem", &cert), dir.write("key.pem", &key));
        Site {
            _dir: dir,
            ca,
            files,
        }
    }

    fn tls(&self) -> Tls {
        Tls::load(self.files.clone()).unwrap()
    }
}

/// A server on the local backend (development sessions), serving TLS with `tls`; `hub`, `router`
/// and `options` adjust the rest.
async fn serve_tls(
    tls: Tls,
    hub: impl FnOnce(sse_fanout::HubBuilder) -> sse_fanout::HubBuilder,
    router: impl FnOnce(sse_fanout::hyper::SseRouter) -> sse_fanout::hyper::SseRouter,
    options: impl FnOnce(&mut ServeOptions),
) -> TestServer {
    let mut serve_options = ServeOptions::default();
    serve_options.tls = Some(tls);
    options(&mut serve_options);
    TestServer::start_serving(
        Arc::new(LocalBackend::new()),
        hub,
        |r| router(r.resolver(sse_fanout::DevSessions)),
        serve_options,
    )
    .await
}

/// A server on the local backend, serving TLS with `tls`.
async fn serve(tls: Tls, publisher_certificates: bool) -> TestServer {
    serve_tls(
        tls,
        |b| b,
        |router| {
            router.config(common::router_config(|c| {
                c.publish_client_certificate = publisher_certificates;
            }))
        },
        |_| {},
    )
    .await
}

/// A client trusting `ca`, speaking HTTP/1.1 only when `http1` (else HTTP/2 by ALPN).
fn tls_client(ca: &str, http1: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .tls_info(true)
        .pool_max_idle_per_host(0);
    if http1 {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

fn url(server: &TestServer, path: &str) -> String {
    format!("https://localhost:{}{path}", server.addr.port())
}

/// The DER of the certificate the server presented to `response`'s connection.
fn presented(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("no TLS info")
        .to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

async fn publish(client: &reqwest::Client, server: &TestServer, body: serde_json::Value) -> u16 {
    client
        .post(url(server, "/sse/publish"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Streams over TLS, one client speaking HTTP/2 (ALPN `h2`), one HTTP/1.1: each gets the events.
#[tokio::test]
async fn streams_over_tls_speak_http2_and_http1() {
    let site = Site::new("versions");
    let ca = &site.ca;
    let server = serve(site.tls(), false).await;
    let stream_url = url(&server, "/sse/event-stream?eventName=e&sessionId=s");
    for (http1, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let client = tls_client(&ca.pem, http1);
        let health = client.get(url(&server, "/healthz")).send().await.unwrap();
        assert_eq!((health.status().as_u16(), health.version()), (200, version));
        let mut stream = SseClient::connect_with(&client, &stream_url, &[]).await;
        assert_eq!(stream.status, 200);
        // HTTP/1.1 streams are served on the direct path, as over plaintext (its response ends
        // the connection); HTTP/2 ones by hyper.
        let close = stream.headers.get("connection").map(|v| v.as_bytes());
        assert_eq!(close, http1.then_some(&b"close"[..]), "{version:?}");
        server.wait_for_streams(1).await;
        let status = publish(
            &client,
            &server,
            json!({"eventName": "e", "sessionId": "s", "payload": {"over": format!("{version:?}")}}),
        )
        .await;
        assert_eq!(status, 202);
        let event = stream.next().await;
        assert_eq!(event.event, "e");
        assert!(
            event.data.contains(&format!("{version:?}")),
            "{}",
            event.data
        );
        drop(stream);
        server.wait_for_streams(0).await;
    }
    server.stop().await;
}

/// A new certificate written over the files is served to new connections within the watch
/// interval, while a stream opened before goes on receiving over its connection; a reload that
/// fails keeps the certificate in use.
#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_and_open_streams_keep_going() {
    let dir = Dir::new("rotation");
    let ca = Ca::new("test CA");
    let (first, first_key) = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256);
    let files = TlsFiles::new(
        dir.write("cert.pem", &first),
        dir.write("key.pem", &first_key),
    );
    let tls = Tls::load(files.clone()).unwrap();
    let server = serve(tls.clone(), false).await;
    let client = tls_client(&ca.pem, false);
    let health = client.get(url(&server, "/healthz")).send().await.unwrap();
    assert_eq!(presented(&health), der(&first));
    let mut open = SseClient::connect_with(
        &client,
        &url(&server, "/sse/event-stream?eventName=e&sessionId=s"),
        &[],
    )
    .await;
    server.wait_for_streams(1).await;

    let (second, second_key) = ca.server(&rcgen::PKCS_ED25519);
    dir.write("key.pem", &second_key);
    dir.write("cert.pem", &second);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let fresh = tls_client(&ca.pem, false);
        let health = fresh.get(url(&server, "/healthz")).send().await.unwrap();
        if presented(&health) == der(&second) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = publish(
        &client,
        &server,
        json!({"eventName": "e", "sessionId": "s", "payload": "after the rotation"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(open.next().await.data, "after the rotation");

    // A key that is not the certificate's: refused, and the second certificate stays.
    dir.write("key.pem", &first_key);
    let refused = tls.reload().unwrap_err();
    assert!(matches!(refused, TlsError::KeyMismatch { .. }), "{refused}");
    assert!(refused.to_string().contains("key.pem"), "{refused}");
    let health = tls_client(&ca.pem, false)
        .get(url(&server, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(presented(&health), der(&second));
    assert!(open.next_within(Duration::from_millis(100)).await.is_none());
    server.stop().await;
}

/// RSA (PKCS#1 and PKCS#8), ECDSA P-256 and P-384, and Ed25519 keys all serve a handshake.
#[tokio::test]
async fn keys_of_every_kind_serve() {
    let dir = Dir::new("kinds");
    let ca = Ca::new("test CA");
    let mut kinds = vec![];
    for (name, alg) in [
        ("ecdsa-p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("ecdsa-p384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("ed25519", &rcgen::PKCS_ED25519),
    ] {
        let (cert, key) = ca.server(alg);
        kinds.push((name, ca.pem.clone(), cert, key));
    }
    // ring cannot make RSA keys: openssl makes one (PKCS#8), and writes it as PKCS#1 too
    // ("traditional"); the test's CA certifies it.
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is needed to make an RSA key");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let rsa_pkcs8 = openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
    ]);
    let rsa_file = dir.write("rsa-source.key", &rsa_pkcs8);
    let rsa_pkcs1 = openssl(&["rsa", "-traditional", "-in", rsa_file.to_str().unwrap()]);
    assert!(
        rsa_pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{rsa_pkcs1}"
    );
    let rsa_cert = {
        let key = KeyPair::from_pem(&rsa_pkcs8).unwrap();
        let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .signed_by(&key, &Issuer::from_params(&ca.params, &ca.key))
            .unwrap()
            .pem()
    };
    kinds.push(("rsa-pkcs8", ca.pem.clone(), rsa_cert.clone(), rsa_pkcs8));
    kinds.push(("rsa-pkcs1", ca.pem.clone(), rsa_cert, rsa_pkcs1));

    for (name, trusted, cert, key) in kinds {
        let files = TlsFiles::new(
            dir.write(&format!("{name}.crt"), &cert),
            dir.write(&format!("{name}.key"), &key),
        );
        let tls = Tls::load(files).unwrap_or_else(|e| panic!("{name}: {e}"));
        let server = serve(tls, false).await;
        let response = tls_client(&trusted, false)
            .get(url(&server, "/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(response.status().as_u16(), 200, "{name}");
        server.stop().await;
    }
}

/// The hub binary will not start on a bad key, a key of another certificate, an expired
/// certificate or a missing file, and says which file and why.
#[tokio::test]
async fn the_hub_binary_refuses_bad_tls_files_naming_them() {
    let dir = Dir::new("startup");
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (_, other_key) = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256);
    let mut expired = CertificateParams::new(vec!["localhost".into()]).unwrap();
    expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let (expired, expired_key) = ca.sign(expired, &rcgen::PKCS_ECDSA_P256_SHA256);

    let cert_file = dir.write("cert.pem", &cert);
    let cases: Vec<(&str, PathBuf, PathBuf, &[&str])> = vec![
        (
            "garbage key",
            cert_file.clone(),
            dir.write("garbage.key", "not a key\n"),
            &["garbage.key", "no PEM item"],
        ),
        (
            "another certificate's key",
            cert_file.clone(),
            dir.write("other.key", &other_key),
            &["other.key", "does not match", "cert.pem"],
        ),
        (
            "expired certificate",
            dir.write("expired.pem", &expired),
            dir.write("expired.key", &expired_key),
            &["expired.pem", "2021"],
        ),
        (
            "missing key file",
            cert_file.clone(),
            dir.0.join("absent.key"),
            &["absent.key", "cannot read"],
        ),
    ];
    dir.write("key.pem", &key);
    for (case, cert, key, expected) in cases {
        let output = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
                .args(["--listen", "127.0.0.1:0"])
                .arg("--tls-cert")
                .arg(&cert)
                .arg("--tls-key")
                .arg(&key)
                .env("RUST_LOG", "error")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{case}: the hub started"))
        .unwrap();
        assert!(!output.status.success(), "{case}: exit 0");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for word in expected {
            assert!(stderr.contains(word), "{case}: `{word}` not in {stderr}");
        }
    }
}

/// With a publisher CA, publishing needs a client certificate it signed (`401` without one);
/// streams need none (a browser has none); a certificate of another CA fails the handshake, and
/// is counted.
#[tokio::test]
async fn publishing_needs_a_client_certificate_of_the_publisher_ca() {
    let dir = Dir::new("clients");
    let ca = Ca::new("server CA");
    let publishers = Ca::new("publisher CA");
    let strangers = Ca::new("another CA");
    let (cert, key) = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256);
    let files = TlsFiles::new(dir.write("cert.pem", &cert), dir.write("key.pem", &key))
        .publish_client_ca(dir.write("publishers.pem", &publishers.pem));
    let tls = Tls::load(files).unwrap();
    assert!(tls.requires_publisher_certificates());
    let server = serve(tls, true).await;
    let with_identity = |ca_of_client: &Ca| {
        let (cert, key) = ca_of_client.client();
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
            .build()
            .unwrap()
    };
    let body = json!({"eventName": "e", "payload": 1});

    let browser = tls_client(&ca.pem, false);
    let mut stream = SseClient::connect_with(
        &browser,
        &url(&server, "/sse/event-stream?eventName=e&sessionId=s"),
        &[],
    )
    .await;
    assert_eq!(stream.status, 200);
    server.wait_for_streams(1).await;
    let refused = browser
        .post(url(&server, "/sse/publish"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let answer: serde_json::Value = refused.json().await.unwrap();
    assert!(
        answer.to_string().contains("client certificate"),
        "{answer}"
    );

    assert_eq!(
        publish(&with_identity(&publishers), &server, body.clone()).await,
        202
    );
    assert_eq!(stream.next().await.data, "1");

    let before = server
        .router
        .stats()
        .tls_handshake_failures
        .client_certificate;
    let stranger = with_identity(&strangers)
        .post(url(&server, "/sse/publish"))
        .json(&body)
        .send()
        .await;
    assert!(stranger.is_err(), "{stranger:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while server
        .router
        .stats()
        .tls_handshake_failures
        .client_certificate
        == before
    {
        assert!(tokio::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

/// Plain HTTP sent to the TLS port is counted as a protocol failure and gets no answer, and a
/// connection that never starts its handshake is dropped after the first-request timeout.
#[tokio::test]
async fn failed_handshakes_are_counted_by_reason() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let site = Site::new("failures");
    let server = serve_tls(
        site.tls(),
        |b| b,
        |r| r,
        |o| o.first_request_timeout = Duration::from_millis(300),
    )
    .await;
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plaintext was served");
    let silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let failures = server.router.stats().tls_handshake_failures;
        if failures.protocol >= 1 && failures.timeout >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{failures:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(silent);
    server.stop().await;
}

/// `sse-fanout healthcheck` speaks TLS when the hub does (`--tls-cert` set), and reports the
/// hub healthy.
#[tokio::test]
async fn the_healthcheck_command_speaks_tls() {
    let site = Site::new("healthcheck");
    let ca = &site.ca;
    let (cert, key) = (&site.files.cert, &site.files.key);
    let port = common::cluster::free_port();
    let listen = format!("127.0.0.1:{port}");
    let hub = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"));
        command
            .env("SSE_FANOUT_LISTEN", &listen)
            .env("SSE_FANOUT_TLS_CERT", cert)
            .env("SSE_FANOUT_TLS_KEY", key)
            .env("RUST_LOG", "warn")
            .args(extra)
            .kill_on_drop(true);
        command
    };
    let mut running = hub(&[])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = tls_client(&ca.pem, false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hub did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let check = hub(&["healthcheck"]).output().await.unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Without the TLS setting the command speaks plaintext to a TLS port: it fails.
    let plain = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
        .env("SSE_FANOUT_LISTEN", &listen)
        .arg("healthcheck")
        .output()
        .await
        .unwrap();
    assert!(!plain.status.success());

    // SIGHUP reads the certificate again at once, and says so.
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &running.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut log = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        running.stdout.take().unwrap(),
    ));
    tokio::time::timeout(WAIT, async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("SIGHUP: TLS certificate reloaded") {
                return;
            }
        }
        panic!("the hub ended");
    })
    .await
    .expect("no reload on SIGHUP");
}

/// Opens `TABS` EventSources to its own origin, all of one session, and counts the ones open and
/// the events they received.
const TABS_PAGE: &str = r#"<!doctype html><title>tabs</title><script>
window.opened = 0; window.received = 0;
for (let i = 0; i < 10; i++) {
  const source = new EventSource("/sse/event-stream?eventName=tick&sessionId=tabs");
  source.onopen = () => { window.opened++; };
  source.addEventListener("tick", () => { window.received++; });
}
</script>"#;

/// What the page in Chromium reported: streams open, the page's protocol, events received.
async fn tabs_in_chromium(
    page_url: &str,
    cert: Option<&std::path::Path>,
    server: &TestServer,
) -> (usize, String, usize) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/tabs.mjs");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(script)
        .env("PAGE_URL", page_url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(cert) = cert {
        command.env("CERT", cert);
    }
    let mut child = command.spawn().expect("node runs the browser tests");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the page said nothing for 60 s")
            .unwrap()
            .expect("the page ended early")
    };
    let opened_line = next().await;
    let mut words = opened_line.split(' ');
    assert_eq!(words.next(), Some("OPENED"), "{opened_line}");
    let opened: usize = words.next().unwrap().parse().unwrap();
    let protocol = words.nth(1).unwrap_or_default().to_owned();
    server.wait_for_streams(opened).await;
    server
        .hub
        .publish(sse_fanout::SendSseEvent::new("tick", json!("tock")).to_session("tabs"))
        .await
        .unwrap();
    stdin.write_all(b"PUBLISHED\n").await.unwrap();
    let received_line = next().await;
    let received: usize = received_line
        .strip_prefix("RECEIVED ")
        .unwrap_or_else(|| panic!("{received_line}"))
        .parse()
        .unwrap();
    let _ = child.wait().await;
    (opened, protocol, received)
}

/// The reason for TLS in the hub: a browser speaks HTTP/2 only over TLS, and over HTTP/1.1 opens
/// at most six connections to an origin, so the seventh `EventSource` of a page never opens.
/// Headless Chromium opens ten on one page: over HTTPS all ten open (one HTTP/2 connection) and
/// receive an event; over plaintext HTTP/1.1, six.
#[tokio::test]
async fn a_browser_opens_ten_streams_over_https_and_six_over_http1() {
    let site = Site::new("browser");
    let page = |router: sse_fanout::hyper::SseRouter| {
        router.resolver(sse_fanout::DevSessions).static_page(
            "/tabs",
            "text/html; charset=utf-8",
            TABS_PAGE,
        )
    };
    let https = serve_tls(site.tls(), |b| b, page, |_| {}).await;
    let over_tls = tabs_in_chromium(&url(&https, "/tabs"), Some(&site.files.cert), &https).await;
    https.stop().await;
    assert_eq!(over_tls, (10, "h2".to_owned(), 10), "over HTTPS");

    let plain = TestServer::start_serving(
        Arc::new(LocalBackend::new()),
        |b| b,
        page,
        ServeOptions::default(),
    )
    .await;
    let over_http1 = tabs_in_chromium(&plain.url("/tabs"), None, &plain).await;
    plain.stop().await;
    assert_eq!(
        over_http1,
        (6, "http/1.1".to_owned(), 6),
        "over plaintext HTTP/1.1"
    );
}

/// A TLS client that sends its stream request and never reads: on the direct path over TLS its
/// stream is closed as slow and its connection dropped, while a reading client of the same
/// session gets every event.
#[tokio::test]
async fn a_tls_client_that_stops_reading_is_closed_and_others_get_everything() {
    use tokio::io::AsyncWriteExt;
    use tokio_rustls::rustls;
    let site = Site::new("stalled");
    let ca = &site.ca;
    let server = serve_tls(site.tls(), |b| b.queue_size(128), |r| r, |_| {}).await;
    let client = tls_client(&ca.pem, true);
    let mut reader = SseClient::connect_with(
        &client,
        &url(&server, "/sse/event-stream?eventName=e&sessionId=s"),
        &[],
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(der(&ca.pem)))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut stalled = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), socket)
        .await
        .unwrap();
    stalled
        .write_all(b"GET /sse/event-stream?eventName=e&sessionId=s HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    stalled.flush().await.unwrap();
    server.wait_for_streams(2).await;
    common::a_stalled_client_is_dropped_while_a_reader_gets_everything(
        &server,
        &mut reader,
        &mut stalled,
    )
    .await;
    server.stop().await;
}
