//! Decentralized authentication for a test server: an operator, an account with JetStream and a
//! user, each an NKey with a JWT signed by the one above it (the user's by the account, the
//! account's by the operator, the operator's by itself), as `nsc` would make them; the server
//! trusts the operator and finds the accounts in its configuration (`resolver: MEMORY`), and a
//! client proves it is the user with a `.creds` file (the user's JWT and NKey seed).
//!
//! The JWTs are NATS's v2 claims (the layout of the Go library `nats-io/jwt/v2`, which the
//! server decodes): a header `{"typ":"JWT","alg":"ed25519-nkey"}`, then the claims (`jti`, `iat`,
//! `iss`, `name`, `sub` and the NATS part under `nats`, with its `type` and `version: 2`), each
//! base64url without padding, then the Ed25519 signature of `HEADER.CLAIMS` by the issuer's key.
//! Written here in a few lines rather than with a NATS JWT crate: the small one (`nats-jwt`)
//! makes no operator JWT, the others bring a builder framework for the handful of fields a test
//! needs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde_json::{json, Value};
use sha2::{Digest, Sha512_256};

/// No limit, in a JWT's limits.
const NO_LIMIT: i64 = -1;

/// The `.creds` file that [`generate`] writes in its directory.
pub(crate) const USER_CREDS: &str = "user.creds";

/// An operator, its system account, an account with unlimited JetStream and a user of it: writes
/// the user's credentials to [`USER_CREDS`] (mode 0600) in `dir`, which it creates, and returns
/// the lines of `nats-server.conf` that make the server trust the operator and know its accounts
/// (`operator`, `system_account`, `resolver: MEMORY`, `resolver_preload`).
pub(crate) fn generate(dir: &Path) -> Result<String, String> {
    let chain = Chain::new("parallel-test")?;
    write_creds(dir, USER_CREDS, &chain.user_jwt, &chain.user)?;
    Ok(format!(
        "operator: {operator:?}\nsystem_account: {system}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {system}: {system_jwt:?}\n  {account}: {account_jwt:?}\n}}\n",
        operator = chain.operator_jwt,
        system = chain.system.public_key(),
        system_jwt = chain.system_jwt,
        account = chain.account.public_key(),
        account_jwt = chain.account_jwt,
    ))
}

/// Writes `dir/name`: the `.creds` file of a user whose operator no server trusts (a chain made
/// for it alone), well formed and signed, so a server refuses it only for who signed it.
///
/// # Errors
///
/// A key that cannot be made or a file that cannot be written, with the path.
pub fn write_stranger_creds(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let chain = Chain::new("stranger")?;
    write_creds(dir, name, &chain.user_jwt, &chain.user)
}

/// The keys and JWTs of one operator.
struct Chain {
    operator_jwt: String,
    system: KeyPair,
    system_jwt: String,
    account: KeyPair,
    account_jwt: String,
    user: KeyPair,
    user_jwt: String,
}

impl Chain {
    fn new(name: &str) -> Result<Chain, String> {
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let operator_jwt = encode(
            &operator,
            &operator.public_key(),
            name,
            json!({ "type": "operator", "version": 2, "system_account": system.public_key() }),
        )?;
        let system_jwt = encode(
            &operator,
            &system.public_key(),
            "SYS",
            json!({ "type": "account", "version": 2, "limits": account_limits(false) }),
        )?;
        let account_jwt = encode(
            &operator,
            &account.public_key(),
            "tasks",
            json!({ "type": "account", "version": 2, "limits": account_limits(true) }),
        )?;
        let user_jwt = encode(
            &account,
            &user.public_key(),
            "caller",
            json!({
                "type": "user",
                "version": 2,
                "pub": {},
                "sub": {},
                "subs": NO_LIMIT,
                "data": NO_LIMIT,
                "payload": NO_LIMIT,
            }),
        )?;
        Ok(Chain { operator_jwt, system, system_jwt, account, account_jwt, user, user_jwt })
    }
}

/// An account's limits: none, and JetStream without limits when `jetstream` (the server enables
/// JetStream for an account whose memory or disk storage limit is not 0). The system account
/// must not have JetStream.
fn account_limits(jetstream: bool) -> Value {
    let storage = if jetstream { NO_LIMIT } else { 0 };
    json!({
        "subs": NO_LIMIT,
        "data": NO_LIMIT,
        "payload": NO_LIMIT,
        "imports": NO_LIMIT,
        "exports": NO_LIMIT,
        "wildcards": true,
        "conn": NO_LIMIT,
        "leaf": NO_LIMIT,
        "mem_storage": storage,
        "disk_storage": storage,
        "streams": storage,
        "consumer": storage,
    })
}

/// A v2 JWT of `subject` signed by `issuer`, with `nats` as its NATS claims.
fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> Result<String, String> {
    let issued_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|error| format!("the clock is before 1970: {error}"))?
        .as_secs();
    let mut claims = json!({
        "iat": issued_at,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
    });
    // The id: SHA-512/256 of the standard claims, in base32, much as the Go library makes it
    // (the server does not check it; it makes each JWT's id its own).
    let id = Sha512_256::digest(claims.to_string().as_bytes());
    claims["jti"] = Value::String(BASE32_NOPAD.encode(&id));
    claims["nats"] = nats;
    let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer
        .sign(signed.as_bytes())
        .map_err(|error| format!("cannot sign the JWT of {name}: {error}"))?;
    Ok(format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature)))
}

/// Writes `dir/name` in the `.creds` format that `nsc` writes and clients read, readable by its
/// owner only: it holds a secret.
fn write_creds(dir: &Path, name: &str, jwt: &str, user: &KeyPair) -> Result<PathBuf, String> {
    let seed = user.seed().map_err(|error| format!("the user has no seed: {error}"))?;
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(name);
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    );
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    Ok(path)
}
