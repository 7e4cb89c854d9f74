//! A cluster's service-account token issuer for the authenticated-xDS tests: an
//! ES256 key made at test time, its JWKS written where the mesh file's
//! `clusters[].tokenIssuer.jwks` points, and projected tokens shaped as
//! kube-apiserver writes them (`iss`, `sub`, `aud`, `iat`/`nbf`/`exp`, the
//! `kubernetes.io` claim). Nothing secret is kept in the repo.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

/// The audience crossmesh expects by default (mesh file `tokenAudiences`).
pub const AUDIENCE: &str = "istio-ca";

pub struct TokenIssuer {
    iss: String,
    kid: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl TokenIssuer {
    /// Issuer `iss` with key id `k1`; its JWKS is written to `jwks_file`.
    pub fn new(iss: &str, jwks_file: &Path) -> TokenIssuer {
        TokenIssuer::with_kid(iss, jwks_file, "k1")
    }

    /// A new signing key `kid`; the JWKS then lists only it (the issuer rotated
    /// its key: tokens of the old one no longer verify).
    pub fn with_kid(iss: &str, jwks_file: &Path, kid: &str) -> TokenIssuer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
        let issuer = TokenIssuer {
            iss: iss.to_string(),
            kid: kid.to_string(),
            key,
            rng,
        };
        issuer.write_jwks(jwks_file);
        issuer
    }

    /// Write this issuer's JWKS (its one public key) to `jwks_file`.
    pub fn write_jwks(&self, jwks_file: &Path) {
        let p = self.key.public_key().as_ref();
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65]),
        }]});
        std::fs::write(jwks_file, jwks.to_string()).expect("write jwks");
    }

    /// A token for `ns/sa`, audience [`AUDIENCE`], valid for an hour.
    pub fn token_for(&self, ns: &str, sa: &str) -> String {
        self.token(ns, sa, None, AUDIENCE, 3600)
    }

    /// A projected token, bound to `pod` when given, valid from two minutes ago
    /// until `valid_for` seconds from now (negative: already expired).
    pub fn token(
        &self,
        ns: &str,
        sa: &str,
        pod: Option<&str>,
        aud: &str,
        valid_for: i64,
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let mut k8s = json!({
            "namespace": ns,
            "serviceaccount": {"name": sa, "uid": "sa-uid"},
        });
        if let Some(p) = pod {
            k8s["pod"] = json!({"name": p, "uid": "pod-uid"});
        }
        let claims = json!({
            "iss": self.iss,
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "aud": [aud],
            "iat": now - 120,
            "nbf": now - 120,
            "exp": now + valid_for,
            "kubernetes.io": k8s,
        });
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("sign");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}
