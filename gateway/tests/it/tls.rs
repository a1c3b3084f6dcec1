//! Issue 21, item 5: with `tls_cert` and `tls_key` the server speaks HTTPS and WSS (rustls), TLS 1.3
//! only unless `tls_min_version = "1.2"`, with HSTS; plain HTTP gets no answer; half a
//! configuration stops the start with a clear error. The certificate is made by `openssl`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use futures::{SinkExt as _, StreamExt as _};
use rustls::pki_types::pem::PemObject as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::{Running, cloudsync, serve_with};

/// A certificate for 127.0.0.1 and localhost, signed by a CA of the test's own: (the CA's
/// certificate, which clients trust, the server's certificate, its key) as PEM files.
fn certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let made = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(made.success(), "openssl {args:?} failed");
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=cloudsync test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        path("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "cert.pem",
    ]);
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}

/// `cloudsync serve` over TLS: the server and its `host:port`.
fn serve_tls(data: &Path, cert: &Path, key: &Path, min_version: Option<&str>) -> (Running, String) {
    let mut command = cloudsync(data);
    command.env("CLOUDSYNC_TLS_CERT", cert).env("CLOUDSYNC_TLS_KEY", key);
    if let Some(version) = min_version {
        command.env("CLOUDSYNC_TLS_MIN_VERSION", version);
    }
    let (running, addr) = serve_with(command);
    (running, addr)
}

fn client(cert: &Path, max: Option<reqwest::tls::Version>) -> reqwest::blocking::Client {
    let pem = std::fs::read(cert).expect("cert");
    let mut builder = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"));
    if let Some(max) = max {
        builder = builder.max_tls_version(max);
    }
    builder.build().expect("client")
}

#[test]
fn the_server_speaks_tls_13_only_with_hsts_and_websockets_over_it() {
    let data = std::env::temp_dir().join(format!("cloudsync-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data).expect("dir");
    let (ca, cert, key) = certificate(&data);
    let (_server, addr) = serve_tls(&data.join("a"), &cert, &key, None);

    let response = client(&ca, None).get(format!("https://{addr}/healthz")).send().expect("https");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["strict-transport-security"]
            .to_str()
            .expect("ascii")
            .starts_with("max-age="),
        "HSTS"
    );
    let registered: serde_json::Value = client(&ca, None)
        .post(format!("https://{addr}/graphql"))
        .json(&serde_json::json!({ "query": "mutation { register(email: \"tls@example.org\", password: \"correct horse battery\") { accessToken } }" }))
        .send()
        .expect("graphql")
        .json()
        .expect("json");
    let token = registered["data"]["register"]["accessToken"].as_str().expect("token").to_owned();

    // TLS 1.2 is refused, and so is plain HTTP.
    let old = client(&ca, Some(reqwest::tls::Version::TLS_1_2))
        .get(format!("https://{addr}/healthz"))
        .send();
    assert!(old.is_err(), "a TLS 1.2 client got an answer");
    assert!(
        reqwest::blocking::get(format!("http://{addr}/healthz")).is_err(),
        "plain HTTP got an answer"
    );

    // A GraphQL WebSocket over TLS.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_file_iter(&ca).expect("pem") {
            roots.add(der.expect("der")).expect("root");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // As browsers do: HTTP/2 first. The server, which speaks HTTP/1.1, must not agree to h2.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut request = "wss://localhost/graphql/ws".into_client_request().expect("request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().expect("header"));
        let (mut socket, _) = tokio_tungstenite::client_async(request, tls).await.expect("websocket");
        let init = serde_json::json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
        socket.send(Message::Text(init.to_string().into())).await.expect("send");
        let ack = socket.next().await.expect("a message").expect("ok");
        assert!(ack.to_text().expect("text").contains("connection_ack"), "{ack:?}");
    });
    std::fs::remove_dir_all(&data).ok();
}

#[test]
fn tls_12_is_accepted_when_configured_and_half_a_configuration_is_refused() {
    let data = std::env::temp_dir().join(format!("cloudsync-tls12-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data).expect("dir");
    let (ca, cert, key) = certificate(&data);
    {
        let (_server, addr) = serve_tls(&data.join("a"), &cert, &key, Some("1.2"));
        let old = client(&ca, Some(reqwest::tls::Version::TLS_1_2))
            .get(format!("https://{addr}/healthz"))
            .send();
        assert_eq!(old.expect("TLS 1.2 is accepted now").status(), 200);
    }
    let failed = cloudsync(&data.join("b"))
        .env("CLOUDSYNC_TLS_CERT", &cert)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("tls_cert and tls_key go together"), "{stderr}");
    let not_a_key = data.join("cert-as-key.pem");
    std::fs::copy(&cert, &not_a_key).expect("copy");
    let failed = cloudsync(&data.join("c"))
        .env("CLOUDSYNC_TLS_CERT", &cert)
        .env("CLOUDSYNC_TLS_KEY", &not_a_key)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("is not a PEM private key"), "{stderr}");
    std::fs::remove_dir_all(&data).ok();
}
