//! Security against real nats-server processes: server-only and mutual TLS with a CA this test
//! generates, NKey users, and the errors for an unknown CA, an expired certificate, a missing
//! client certificate, `nats://` to a TLS-only server and a wrong NKey. No secret appears in
//! an error message or in `Debug` output.

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
