//! The JWT path on hostile input: a JWKS document, a token and an event-name pattern, all taken
//! from the input. A JWKS loads or is refused with a typed error; a token verifies or is a `401`;
//! a grant answers. Never a panic, never slow.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sse_hyper::{EventGrant, JwtKeys, JwtVerifier};

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
}

/// A JWKS every input may use: the token part may well name `k1` with RS256, ES256 or EdDSA.
const KNOWN: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","e":"AQAB","n":"znYJuSuBaQakEvZOj5N-8bAkzRm1i9Ud9Bb8wk8GiP5Jx83xoaqFqNzwmzcxaqlAVnWmS0lxOZIGiB9HzslsSBblJVP3TLKS-Ko5M2CHWq-3o9DltV3-MW699V4nvqCxK2jQdIUf1sKIYCZ3mpAr-jLQBUVPmyeWgUHsf72ZUCmkHVTwGPsPcHCjAmes8wl2o-PxItbfXXjkXzjuxS0u4CNcaoJrgZgWFSKCriIaxl4FYlcRewm_XleQEibdv-bIW9U6fmmAe9aiHE4kSp71OP2qt4O4V_C_qzssJZdDEj9nUlzj1cUHPpcYK0E2FsoT_ib6IrNm4BZ9T9H4Kp3AvQ"},{"kty":"EC","kid":"k2","crv":"P-256","x":"22MaoSxHMTfbJJpybnOhSPYXvsGah4rzQvyqFwQ4na4","y":"5kNDQenhVYH9-jjSua8EO29MTV8k93nlSBqX-7JQsfQ"},{"kty":"OKP","kid":"k3","crv":"Ed25519","x":"0sKGajQsT2MsjDGSFCNeQQ7G3Y_cUBaFOKCRY2RjZKs"}]}"#;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let (jwks, token, pattern) = (parts.next(), parts.next(), parts.next());
    if let Some(jwks) = jwks {
        let _ = JwtKeys::jwks_json(jwks);
    }
    let keys = JwtKeys::jwks_json(KNOWN.as_bytes()).expect("the known JWKS loads");
    let verifier = JwtVerifier::new(keys).issuers(["i"]).audiences(["a"]);
    if let Some(token) = token.and_then(|t| std::str::from_utf8(t).ok()) {
        let result = RUNTIME.with(|rt| rt.block_on(verifier.verify(token)));
        if let Err(error) = result {
            assert_eq!(error.status.as_u16(), 401);
        }
        let hs = JwtVerifier::new(JwtKeys::hs256("secret"));
        if let Err(error) = RUNTIME.with(|rt| rt.block_on(hs.verify(token))) {
            assert_eq!(error.status.as_u16(), 401);
        }
    }
    if let Some(rest) = pattern {
        let mut halves = rest.splitn(2, |&b| b == 0xfe);
        let text = |part: Option<&[u8]>| String::from_utf8_lossy(part.unwrap_or(b"")).into_owned();
        let (pattern, name) = (text(halves.next()), text(halves.next()));
        let grant = EventGrant::new([pattern.as_str()]);
        let _ = grant.allows(&name);
        let _ = grant.allows_all();
    }
});
