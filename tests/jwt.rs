//! Tokens as identity providers issue them, against the hub process: RS256, ES256 and EdDSA keys
//! the test makes (with `openssl`), published as a JWKS by a local HTTP server of the test's own
//! that counts its requests, or over HTTPS by `openssl s_server` with a certificate of a CA the
//! test made; `iss`, `aud`, `exp`, `nbf` and algorithm checks; key rotation; event names allowed
//! by a claim, for streams and for publishers.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::cluster::{HubProcess, free_port};
use common::{SseClient, brokers, client};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A signing key the test made, and its public half as a JWK.
struct TestKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    fn make(dir: &Path, algorithm: Algorithm, kid: &str) -> TestKey {
        let pem = dir.join(format!("{kid}.pem"));
        let pem_path = pem.to_str().unwrap();
        let genpkey: &[&str] = match algorithm {
            Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::EdDSA => &["-algorithm", "ED25519"],
            other => panic!("no test key for {other:?}"),
        };
        let mut args = vec!["genpkey"];
        args.extend_from_slice(genpkey);
        args.extend_from_slice(&["-out", pem_path]);
        openssl(&args);
        let private = std::fs::read(&pem).unwrap();
        let public_der = openssl(&["pkey", "-in", pem_path, "-pubout", "-outform", "DER"]);
        let (encoding, jwk) = match algorithm {
            Algorithm::RS256 => {
                let modulus =
                    String::from_utf8(openssl(&["rsa", "-in", pem_path, "-noout", "-modulus"]))
                        .unwrap();
                let hex = modulus.trim().trim_start_matches("Modulus=");
                let n: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                (
                    EncodingKey::from_rsa_pem(&private).unwrap(),
                    json!({"kty": "RSA", "n": b64(&n), "e": "AQAB", "alg": "RS256", "use": "sig"}),
                )
            }
            Algorithm::ES256 => {
                let point = &public_der[public_der.len() - 64..];
                (
                    EncodingKey::from_ec_pem(&private).unwrap(),
                    json!({"kty": "EC", "crv": "P-256", "x": b64(&point[..32]), "y": b64(&point[32..])}),
                )
            }
            _ => (
                EncodingKey::from_ed_pem(&private).unwrap(),
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&public_der[public_der.len() - 32..])}),
            ),
        };
        let mut jwk = jwk;
        jwk["kid"] = kid.into();
        TestKey {
            kid: kid.to_owned(),
            algorithm,
            encoding,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

const ISSUER: &str = "https://id.example";
const AUDIENCE: &str = "sse";

/// Claims that pass every check, for `sub`.
fn claims(sub: &str) -> Value {
    json!({
        "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600,
        "sse_events": ["order-*", "news"], "sse_publish": "order-*"
    })
}

/// A JWKS served over HTTP on loopback, whose keys the test may change; counts its requests.
struct JwksServer {
    port: u16,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let body = json!({"keys": *served.lock().unwrap()}).to_string();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = socket.read(&mut head).await;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        JwksServer {
            port,
            keys,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks.json", self.port)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A fresh directory for a test's keys, or `None` (said loudly) when `openssl` is missing.
fn key_dir(name: &str) -> Option<std::path::PathBuf> {
    let installed = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        brokers::not_installed("openssl");
        return None;
    }
    let dir = std::env::temp_dir().join(common::unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    Some(dir)
}

async fn stream_status(hub: &HubProcess, query: &str, token: &str) -> u16 {
    client()
        .get(hub.url(&format!("/sse/event-stream?{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The status of a stream opened with a token of `key` that names no audience (the hub checks
/// none unless told to).
async fn opens_without_aud(hub: &HubProcess, key: &TestKey, query: &str) -> u16 {
    let mut no_aud = claims("user");
    no_aud.as_object_mut().unwrap().remove("aud");
    stream_status(hub, query, &key.sign(&no_aud)).await
}

#[tokio::test]
async fn tokens_of_an_identity_provider_verified_against_its_jwks() {
    let Some(dir) = key_dir("jwt-keys") else {
        return;
    };
    let rsa = TestKey::make(&dir, Algorithm::RS256, "rsa-1");
    let ec = TestKey::make(&dir, Algorithm::ES256, "ec-1");
    let ed = TestKey::make(&dir, Algorithm::EdDSA, "ed-1");
    let later = TestKey::make(&dir, Algorithm::ES256, "ec-2");
    let jwks = JwksServer::start(vec![rsa.jwk.clone(), ec.jwk.clone(), ed.jwk.clone()]).await;
    let args = [
        "--jwks-url",
        &jwks.url(),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        "--jwt-leeway",
        "5",
        "--jwt-events-claim",
        "sse_events",
        "--jwt-publish-claim",
        "sse_publish",
    ]
    .map(String::from);
    let hub = HubProcess::ready(free_port(), &args).await;
    assert_eq!(jwks.fetches(), 1, "fetched once at start");

    // Each algorithm: the stream belongs to the token's `sub`, and gets that session's events.
    for (n, key) in [&rsa, &ec, &ed].into_iter().enumerate() {
        let sub = format!("user-{n}");
        let token = key.sign(&claims(&sub));
        let url = hub.url(&format!(
            "/sse/event-stream?eventName=order-1&access_token={token}"
        ));
        let mut stream = SseClient::connect(&url, &[]).await;
        assert_eq!(stream.status, 200, "{:?}", key.algorithm);
        let r = client()
            .post(hub.url("/sse/publish"))
            .bearer_auth(key.sign(&claims("publisher")))
            .json(&json!({"eventName": "order-1", "sessionId": sub, "payload": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{:?}", key.algorithm);
        assert_eq!(stream.next().await.data, n.to_string());
    }

    // What must not pass: each is 401.
    let mut bad = Vec::new();
    let mut wrong_issuer = claims("u");
    wrong_issuer["iss"] = "https://evil.example".into();
    bad.push(("wrong iss", rsa.sign(&wrong_issuer)));
    let mut wrong_audience = claims("u");
    wrong_audience["aud"] = "other".into();
    bad.push(("wrong aud", ec.sign(&wrong_audience)));
    let mut expired = claims("u");
    expired["exp"] = (now() - 60).into();
    bad.push(("expired beyond the leeway", ed.sign(&expired)));
    let mut early = claims("u");
    early["nbf"] = (now() + 60).into();
    bad.push(("nbf ahead beyond the leeway", rsa.sign(&early)));
    let mut no_exp = claims("u");
    no_exp.as_object_mut().unwrap().remove("exp");
    bad.push(("no exp", ec.sign(&no_exp)));
    // The RSA key's kid with HS256, keyed with the public JWK's text: algorithm confusion.
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("rsa-1".into());
    let hmac = EncodingKey::from_secret(rsa.jwk.to_string().as_bytes());
    bad.push((
        "HS256 under an RSA kid",
        jsonwebtoken::encode(&confused, &claims("u"), &hmac).unwrap(),
    ));
    let body = b64(claims("u").to_string().as_bytes());
    bad.push((
        "alg none",
        format!("{}.{body}.", b64(br#"{"alg":"none","kid":"rsa-1"}"#)),
    ));
    let mut crit = Header::new(Algorithm::ES256);
    crit.kid = Some("ec-1".into());
    crit.crit = Some(vec!["exp-ext".into()]);
    bad.push((
        "crit",
        jsonwebtoken::encode(&crit, &claims("u"), &ec.encoding).unwrap(),
    ));
    for (what, token) in &bad {
        assert_eq!(
            stream_status(&hub, "eventName=news", token).await,
            401,
            "{what}"
        );
    }

    // Event names the claim does not allow: 403, for streams and for publishing.
    let token = rsa.sign(&claims("u"));
    assert_eq!(
        stream_status(&hub, "eventName=news,order-9", &token).await,
        200
    );
    assert_eq!(stream_status(&hub, "eventName=secret", &token).await, 403);
    assert_eq!(
        stream_status(&hub, "eventName=news,secret", &token).await,
        403
    );
    assert_eq!(stream_status(&hub, "eventName=*", &token).await, 403);
    let publish = |token: String, name: &'static str| {
        let url = hub.url("/sse/publish");
        async move {
            let mut request = client()
                .post(url)
                .json(&json!({"eventName": name, "payload": 1}));
            if !token.is_empty() {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(publish(token.clone(), "order-2").await, 202);
    assert_eq!(publish(token.clone(), "news").await, 403);
    assert_eq!(publish(String::new(), "order-2").await, 401);
    let mut no_grant = claims("u");
    no_grant.as_object_mut().unwrap().remove("sse_publish");
    assert_eq!(publish(ec.sign(&no_grant), "order-2").await, 403);
    // Ending a session's streams needs a grant of every event name.
    let disconnect = |token: String| {
        let url = hub.url("/sse/disconnect");
        async move {
            client()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"sessionId": "user-0"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(disconnect(token.clone()).await, 403);
    let mut everything = claims("u");
    everything["sse_publish"] = "*".into();
    assert_eq!(disconnect(rsa.sign(&everything)).await, 202);

    // Rotation: a key the provider adds later is fetched when a token first names it; unknown
    // key ids do not make the hub fetch per request.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await; // past the start's fetch
    let fetched = jwks.fetches();
    assert_eq!(fetched, 1, "no bad token above made the hub fetch");
    let unknown = later.sign(&claims("u"));
    assert_eq!(stream_status(&hub, "eventName=news", &unknown).await, 401);
    assert_eq!(
        jwks.fetches(),
        fetched + 1,
        "an unknown kid fetches the JWKS once"
    );
    jwks.keys.lock().unwrap().push(later.jwk.clone());
    for _ in 0..20 {
        assert_eq!(stream_status(&hub, "eventName=news", &unknown).await, 401);
    }
    assert_eq!(jwks.fetches(), fetched + 1, "not again within 10 s");
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    assert_eq!(stream_status(&hub, "eventName=news", &unknown).await, 200);
    assert_eq!(jwks.fetches(), fetched + 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_jwks_file_and_a_refused_http_url() {
    let Some(dir) = key_dir("jwt-file") else {
        return;
    };
    let ed = TestKey::make(&dir, Algorithm::EdDSA, "ed-file");
    let file = dir.join("jwks.json");
    std::fs::write(&file, json!({"keys": [ed.jwk]}).to_string()).unwrap();
    let args = [
        "--jwks-file".to_owned(),
        file.to_string_lossy().into_owned(),
    ];
    let hub = HubProcess::ready(free_port(), &args).await;
    assert_eq!(opens_without_aud(&hub, &ed, "eventName=*").await, 200);
    drop(hub);

    // A JWKS over plain HTTP from beyond loopback could be swapped on the way: refused.
    let output = Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--jwks-url",
            "http://id.example/jwks.json",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("use https://"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `openssl s_server` serving `dir` over HTTPS with a certificate of a CA the test made.
struct HttpsServer {
    port: u16,
    child: std::process::Child,
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_jwks_over_https_from_a_private_ca() {
    let Some(dir) = key_dir("jwt-https") else {
        return;
    };
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=sse-fanout test CA",
    ];
    ca.extend_from_slice(&ec);
    let (ca_key, ca_pem) = (path("ca.key"), path("ca.pem"));
    ca.extend_from_slice(&["-keyout", &ca_key, "-out", &ca_pem]);
    openssl(&ca);
    let (key, csr, cert, ext) = (
        path("srv.key"),
        path("srv.csr"),
        path("srv.pem"),
        path("ext"),
    );
    let mut request = vec![
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ];
    request.extend_from_slice(&ec);
    openssl(&request);
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        &cert,
        "-extfile",
        &ext,
    ]);
    let ed = TestKey::make(&dir, Algorithm::EdDSA, "ed-tls");
    std::fs::write(dir.join("jwks.json"), json!({"keys": [ed.jwk]}).to_string()).unwrap();
    let port = free_port();
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-WWW",
            "-accept",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["-cert", &cert, "-key", &key])
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = HttpsServer { port, child };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.port));
    while std::net::TcpStream::connect(addr).is_err() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let url = format!("https://127.0.0.1:{}/jwks.json", server.port);

    // Without the CA, the provider's certificate is not trusted: the hub does not start.
    let untrusted = Command::new(env!("CARGO_BIN_EXE_sse-fanout"))
        .args(["--listen", "127.0.0.1:0", "--jwks-url", &url])
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("cannot fetch the JWKS"), "{stderr}");

    let args = ["--jwks-url", &url, "--jwks-ca-file", &ca_pem].map(String::from);
    let hub = HubProcess::ready(free_port(), &args).await;
    assert_eq!(opens_without_aud(&hub, &ed, "eventName=news").await, 200);
    drop(hub);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
