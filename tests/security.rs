//! Security against real nats-server processes: server-only and mutual TLS with a CA this test
//! generates, NKey users, JWT users from a `.creds` file (operator mode, JWTs signed here),
//! and the errors for an unknown CA, an expired certificate, a missing client certificate,
//! `nats://` to a TLS-only server, a wrong NKey and a wrong or broken `.creds` file. No secret
//! appears in an error message or in `Debug` output.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use eda::testing::NatsServer;
use eda::{App, AppBuilder, NatsSettings};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// A CA and the certificates it signed, as PEM files in a temporary directory.
struct Pki {
    dir: PathBuf,
    ca: Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "eda-pki-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate signed by this CA, written as `<name>.pem` and `<name>-key.pem`.
    fn issue(
        &self,
        name: &str,
        purpose: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![purpose];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert_file, key_file) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A TLS-only server with `pki`'s server certificate; with `verify` it also wants a client
/// certificate signed by the same CA.
fn tls_server(pki: &Pki, expired: bool, verify: bool) -> NatsServer {
    let (cert, key) = pki.issue("server", ExtendedKeyUsagePurpose::ServerAuth, expired);
    let ca = pki.ca_file();
    let mut args = vec!["--tls", "--tlscert", path(&cert), "--tlskey", path(&key)];
    if verify {
        args.extend(["--tlsverify", "--tlscacert", path(&ca)]);
    }
    NatsServer::start_with_args(&args).unwrap_or_else(|e| panic!("{e}"))
}

fn tls_url(server: &NatsServer) -> String {
    format!("tls://127.0.0.1:{}", server.port())
}

fn builder(configure: impl FnOnce(AppBuilder) -> AppBuilder) -> AppBuilder {
    configure(App::builder("security-tests"))
        .without_env()
        .handlers(&[])
        .connect_timeout(Duration::from_secs(3))
}

/// Starts the app, publishes one event and shuts down: the connection and JetStream work.
async fn works(builder: AppBuilder) {
    let app = tokio::time::timeout(Duration::from_secs(60), builder.start())
        .await
        .expect("starting within a minute")
        .unwrap_or_else(|e| panic!("the app should start: {e}"));
    let id = app
        .publisher()
        .publish_raw("security.checked", 1, &b"{}"[..])
        .await
        .unwrap_or_else(|e| panic!("publishing over the secured connection: {e}"));
    assert!(!id.is_empty());
    app.shutdown().await.unwrap();
}

async fn fails(builder: AppBuilder) -> String {
    match tokio::time::timeout(Duration::from_secs(60), builder.start())
        .await
        .expect("failing within a minute")
    {
        Ok(app) => {
            let _ = app.shutdown().await;
            panic!("the app started but should not have")
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_works_with_its_ca_and_every_wrong_setup_says_what_is_wrong() {
    let pki = Pki::new("server-tls");
    let server = tls_server(&pki, false, false);
    let ca = pki.ca_file();
    works(builder(|b| b.nats(tls_url(&server)).nats_tls_ca(&ca))).await;

    let stranger = Pki::new("stranger");
    let message = fails(builder(|b| {
        b.nats(tls_url(&server)).nats_tls_ca(stranger.ca_file())
    }))
    .await;
    assert!(
        message.contains("not signed by a trusted CA: set EDA_NATS_TLS_CA"),
        "an unknown CA: {message}"
    );

    let message = fails(builder(|b| b.nats(server.url()))).await;
    assert!(
        message.contains("requires TLS") && message.contains("use a tls:// URL"),
        "nats:// to a TLS-only server: {message}"
    );

    let expired_pki = Pki::new("expired");
    let expired = tls_server(&expired_pki, true, false);
    let message = fails(builder(|b| {
        b.nats(tls_url(&expired)).nats_tls_ca(expired_pki.ca_file())
    }))
    .await;
    assert!(
        message.contains("expired or not yet valid"),
        "an expired server certificate: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_with_a_client_certificate_and_fails_clearly_without_one() {
    let pki = Pki::new("mutual-tls");
    let server = tls_server(&pki, false, true);
    let ca = pki.ca_file();
    let (cert, key) = pki.issue("client", ExtendedKeyUsagePurpose::ClientAuth, false);
    works(builder(|b| {
        b.nats(tls_url(&server))
            .nats_tls_ca(&ca)
            .nats_tls_client_cert(&cert, &key)
    }))
    .await;

    let message = fails(builder(|b| b.nats(tls_url(&server)).nats_tls_ca(&ca))).await;
    assert!(
        message.contains("the server wants a client certificate")
            && message.contains("EDA_NATS_TLS_CERT"),
        "no client certificate: {message}"
    );

    let stranger = Pki::new("stranger-client");
    let (cert, key) = stranger.issue("client", ExtendedKeyUsagePurpose::ClientAuth, false);
    let message = fails(builder(|b| {
        b.nats(tls_url(&server))
            .nats_tls_ca(&ca)
            .nats_tls_client_cert(&cert, &key)
    }))
    .await;
    assert!(
        message.contains("the server refused the client certificate (EDA_NATS_TLS_CERT"),
        "a client certificate of another CA: {message}"
    );

    let message = fails(builder(|b| {
        b.nats(tls_url(&server))
            .nats_tls_ca(&ca)
            .nats_tls_client_cert(pki.dir.join("missing.pem"), &key)
    }))
    .await;
    assert!(
        message.contains("TLS client certificate") && message.contains("is not a readable file"),
        "{message}"
    );
}

/// A server whose only user is known by the public key of `user`.
fn nkey_server(user: &nkeys::KeyPair) -> (NatsServer, PathBuf) {
    let config = std::env::temp_dir().join(format!(
        "eda-nkey-{}-{}.conf",
        std::process::id(),
        &user.public_key()[..8]
    ));
    std::fs::write(
        &config,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let server =
        NatsServer::start_with_args(&["-c", path(&config)]).unwrap_or_else(|e| panic!("{e}"));
    (server, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_user_connects_and_a_wrong_or_malformed_seed_is_a_clear_error_without_the_seed() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let (server, config) = nkey_server(&user);
    works(builder(|b| b.nats(server.url()).nats_nkey(&seed))).await;

    let other = nkeys::KeyPair::new_user().seed().unwrap();
    let message = fails(builder(|b| b.nats(server.url()).nats_nkey(&other))).await;
    assert!(
        message.contains("rejected the credentials") && message.contains("EDA_NATS_NKEY"),
        "{message}"
    );
    assert!(
        !message.contains(&other),
        "the seed is not printed: {message}"
    );

    // The public key where the seed belongs, and an account seed: caught before connecting.
    let account_seed = nkeys::KeyPair::new_account().seed().unwrap();
    for wrong in [user.public_key(), account_seed] {
        let message = fails(builder(|b| b.nats(server.url()).nats_nkey(&wrong))).await;
        assert!(
            message.contains("the NKey seed is not a user seed"),
            "{message}"
        );
        assert!(
            !message.contains(&wrong),
            "the value is not printed: {message}"
        );
    }
    let _ = std::fs::remove_file(config);
}

#[test]
fn secrets_never_appear_in_debug_output_or_url_errors() {
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let builders = [
        App::builder("s").nats("nats://ada:pa55word@127.0.0.1:4222"),
        App::builder("s")
            .nats("nats://127.0.0.1:4222")
            .nats_user_password("ada", "pa55word"),
        App::builder("s")
            .nats("nats://127.0.0.1:4222")
            .nats_token("pa55word"),
        App::builder("s")
            .nats("nats://127.0.0.1:4222")
            .nats_nkey(&seed),
    ];
    for builder in builders {
        let debug = format!("{builder:?}");
        assert!(
            !debug.contains("pa55word") && !debug.contains(&seed),
            "{debug}"
        );
    }
    let mut settings =
        NatsSettings::new("nats://s3cret-token@127.0.0.1:4222,nats://ada:pa55word@127.0.0.1:4223");
    settings.auth = eda::NatsAuth::Token("pa55word".into());
    let debug = format!("{settings:?}");
    assert!(
        !debug.contains("pa55word") && !debug.contains("s3cret-token"),
        "{debug}"
    );
    assert!(
        debug.contains("nats://***@127.0.0.1:4222,nats://ada:***@127.0.0.1:4223"),
        "{debug}"
    );

    // A URL with a password that fails the checks: the message names the URL, masked.
    let message = App::builder("s")
        .nats("nats://ada:pa55word@127.0.0.1:4222,http://x")
        .without_env()
        .handlers(&[])
        .build()
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("nats://ada:***@127.0.0.1:4222"),
        "{message}"
    );
    assert!(!message.contains("pa55word"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_written_in_the_url_are_sent_and_never_printed() {
    let server = NatsServer::start_with_args(&["--user", "ada", "--pass", "p@ss/w:rd"])
        .unwrap_or_else(|e| panic!("{e}"));
    let port = server.port();
    works(builder(|b| {
        b.nats(format!("nats://ada:p%40ss%2Fw%3Ard@127.0.0.1:{port}"))
    }))
    .await;
    let message = fails(builder(|b| {
        b.nats(format!("nats://ada:wr0ng-secret@127.0.0.1:{port}"))
    }))
    .await;
    assert!(message.contains("rejected the credentials"), "{message}");
    assert!(!message.contains("wr0ng-secret"), "{message}");
    assert!(message.contains("nats://ada:***@127.0.0.1"), "{message}");
    // Credentials set in code win over the URL's.
    works(builder(|b| {
        b.nats(format!("nats://ada:wr0ng-secret@127.0.0.1:{port}"))
            .nats_user_password("ada", "p@ss/w:rd")
    }))
    .await;

    let server =
        NatsServer::start_with_args(&["--auth", "t0ken-in-url"]).unwrap_or_else(|e| panic!("{e}"));
    works(builder(|b| {
        b.nats(format!("nats://t0ken-in-url@127.0.0.1:{}", server.port()))
    }))
    .await;
}

// ---- JWT (decentralized) authentication: operator, account and user JWTs and a .creds file ----

#[eda::event("security.creds.checked")]
struct CredsChecked {
    id: u64,
}

#[eda::handler(service = "security-tests")]
async fn on_creds_checked(_event: CredsChecked) {}

/// A temporary directory, removed on drop.
struct ScratchDir {
    dir: PathBuf,
}

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("eda-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir { dir }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Base64url without padding, as JWTs use it.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A NATS JWT (v2) saying `nats` about `subject`, signed by `issuer`. The `jti` only has to
/// be unique: nats-io/jwt makes it a hash of the claims, but neither it nor the server
/// checks that when decoding (only the signature and the issuer's key type).
fn nats_jwt(
    issuer: &nkeys::KeyPair,
    subject: &str,
    kind: &str,
    mut nats: serde_json::Value,
) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    nats["type"] = kind.into();
    nats["version"] = 2.into();
    let claims = serde_json::json!({
        "jti": format!("EDA{}X{}X{}", now.as_nanos(), std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)),
        "iat": now.as_secs(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": format!("eda-{kind}"),
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        base64url(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", base64url(&signature))
}

/// An account JWT signed by `operator`; JetStream limits go flat into `limits` (JWT v2).
fn account_jwt(operator: &nkeys::KeyPair, account: &nkeys::KeyPair, jetstream: bool) -> String {
    let mut limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for limit in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[limit] = (-1).into();
        }
    }
    nats_jwt(
        operator,
        &account.public_key(),
        "account",
        serde_json::json!({ "limits": limits, "default_permissions": { "pub": {}, "sub": {} } }),
    )
}

/// A user JWT for `user`, signed by `account`, allowed everything.
fn user_jwt(account: &nkeys::KeyPair, user: &nkeys::KeyPair) -> String {
    nats_jwt(
        account,
        &user.public_key(),
        "user",
        serde_json::json!({ "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1 }),
    )
}

/// A `.creds` file as `nsc` writes it.
fn creds_file(dir: &Path, name: &str, jwt: &str, seed: &str) -> PathBuf {
    let file = dir.join(format!("{name}.creds"));
    std::fs::write(
        &file,
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        ),
    )
    .unwrap();
    file
}

/// A server in operator mode trusting `operator`, knowing (from memory) a system account and
/// `accounts`.
fn operator_server(
    dir: &Path,
    operator: &nkeys::KeyPair,
    accounts: &[&nkeys::KeyPair],
) -> NatsServer {
    let system = nkeys::KeyPair::new_account();
    let operator_jwt = nats_jwt(
        operator,
        &operator.public_key(),
        "operator",
        serde_json::json!({ "system_account": system.public_key() }),
    );
    let operator_file = dir.join("operator.jwt");
    std::fs::write(&operator_file, &operator_jwt).unwrap();
    let mut preload = format!(
        "  {}: \"{}\"\n",
        system.public_key(),
        account_jwt(operator, &system, false)
    );
    for account in accounts {
        preload += &format!(
            "  {}: \"{}\"\n",
            account.public_key(),
            account_jwt(operator, account, true)
        );
    }
    let config = dir.join("operator.conf");
    std::fs::write(
        &config,
        format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n{preload}}}\n",
            path(&operator_file),
            system.public_key()
        ),
    )
    .unwrap();
    NatsServer::start_with_args(&["-c", path(&config)]).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_with_a_user_jwt_connects_and_a_wrong_one_is_a_clear_error() {
    let dir = ScratchDir::new("creds");
    let (operator, account) = (
        nkeys::KeyPair::new_operator(),
        nkeys::KeyPair::new_account(),
    );
    let server = operator_server(&dir.dir, &operator, &[&account]);

    // The user of a known account: it connects, and an event goes out and is handled.
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let jwt = user_jwt(&account, &user);
    let creds = creds_file(&dir.dir, "user", &jwt, &seed);
    let app = tokio::time::timeout(
        Duration::from_secs(60),
        eda::testing::TestApp::builder("security-tests")
            .nats(server.url())
            .configure(|b| {
                b.nats_credentials(&creds)
                    .connect_timeout(Duration::from_secs(3))
            })
            .handlers(&["on_creds_checked"])
            .start(),
    )
    .await
    .expect("starting within a minute")
    .unwrap_or_else(|e| panic!("the app should start with the creds file: {e}"));
    app.publish(&CredsChecked { id: 1 })
        .await
        .unwrap_or_else(|e| panic!("publishing as the JWT user: {e}"));
    tokio::time::timeout(Duration::from_secs(60), app.settle())
        .await
        .expect("settling within a minute");
    assert_eq!(app.handled("on_creds_checked"), 1);
    app.shutdown().await.unwrap();

    // The server really wants credentials: none at all is refused.
    let message = fails(builder(|b| b.nats(server.url()))).await;
    assert!(message.contains("rejected the credentials"), "{message}");

    // A user signed by an account the server does not know, and a known user's JWT with
    // another user's seed (the nonce signature does not match the JWT's key).
    let stranger = nkeys::KeyPair::new_account();
    let other = nkeys::KeyPair::new_user();
    let other_seed = other.seed().unwrap();
    let stranger_jwt = user_jwt(&stranger, &other);
    let wrong = [
        (
            "unknown-account",
            creds_file(&dir.dir, "stranger", &stranger_jwt, &other_seed),
            &other_seed,
        ),
        (
            "mismatched-seed",
            creds_file(&dir.dir, "mismatched", &jwt, &other_seed),
            &other_seed,
        ),
    ];
    for (what, file, secret) in &wrong {
        let builder = builder(|b| b.nats(server.url()).nats_credentials(file));
        let debug = format!("{builder:?}");
        assert!(
            !debug.contains(secret.as_str()),
            "{what}: the seed is not printed: {debug}"
        );
        let error = match tokio::time::timeout(Duration::from_secs(60), builder.start())
            .await
            .expect("failing within a minute")
        {
            Ok(app) => {
                let _ = app.shutdown().await;
                panic!("{what}: the app started but should not have")
            }
            Err(e) => e,
        };
        assert_eq!(error.kind(), eda::ErrorKind::Auth, "{what}: {error}");
        let (message, debug) = (error.to_string(), format!("{error:?}"));
        assert!(
            message.contains("rejected the credentials") && message.contains("EDA_NATS_CREDS"),
            "{what}: {message}"
        );
        assert!(
            message.to_lowercase().contains("authorization violation"),
            "{what}: the server's reason is kept: {message}"
        );
        for text in [&message, &debug] {
            assert!(
                !text.contains(secret.as_str()),
                "{what}: the seed is not printed: {text}"
            );
        }
    }

    // A seed that is not one (a character changed): the file is named, its contents are not.
    let mut broken = seed.clone().into_bytes();
    broken[10] = if broken[10] == b'A' { b'B' } else { b'A' };
    let broken = String::from_utf8(broken).unwrap();
    let file = creds_file(&dir.dir, "broken", &jwt, &broken);
    let message = fails(builder(|b| b.nats(server.url()).nats_credentials(&file))).await;
    assert!(
        message.contains(&format!(
            "cannot read credentials file `{}`",
            file.display()
        )),
        "{message}"
    );
    assert!(
        !message.contains(&broken) && !message.contains(&seed),
        "{message}"
    );
}
