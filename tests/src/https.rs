//! A throwaway certificate authority and an HTTPS server on 127.0.0.1 inside a
//! test namespace, serving documents the test sets (and may change) by path: what
//! `airlock ranges fetch` downloads in tests, which reach no provider.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::TcpListener,
    sync::{Arc, Mutex, atomic::Ordering},
    thread,
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::netns::{Background, Namespace};

/// The port the server listens on, in its namespace.
pub const PORT: u16 = 8443;

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1.
pub struct TestCa {
    /// The CA certificate, PEM: what the client is told to trust.
    pub ca_pem: String,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Airlock test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        Self {
            ca_pem: ca_cert.pem(),
            cert: cert.der().clone(),
            key: key.serialize_der(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// What the server answers for a path: status, body, ETag header.
pub type Routes = Arc<Mutex<HashMap<String, (u16, String, Option<String>)>>>;

/// The server; stops when dropped.
pub struct HttpsServer {
    pub routes: Routes,
    _threads: Background,
}

impl HttpsServer {
    pub fn start(ns: &Namespace, ca: &TestCa) -> Self {
        // ring, as ureq's rustls uses; rustls marks it deprecated only for lacking
        // post-quantum key exchange, which a test server has no use for.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![ca.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.key.clone())),
            )
            .expect("server config");
        let config = Arc::new(config);
        let routes: Routes = Arc::default();
        let mut threads = Background::default();
        let served = Arc::clone(&routes);
        threads.spawn(ns, move |ready, stop| {
            let listener = TcpListener::bind(("127.0.0.1", PORT)).expect("bind https");
            listener.set_nonblocking(true).expect("nonblocking");
            ready();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        // One connection at a time is all a test needs; a client
                        // that fails the handshake just ends its connection.
                        let _ = serve(stream, &config, &served);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            routes,
            _threads: threads,
        }
    }

    /// Serves `body` at `path` with status 200.
    pub fn set(&self, path: &str, body: &str, etag: Option<&str>) {
        self.routes.lock().unwrap().insert(
            path.to_owned(),
            (200, body.to_owned(), etag.map(str::to_owned)),
        );
    }

    /// The URL of `path`.
    pub fn url(path: &str) -> String {
        format!("https://localhost:{PORT}{path}")
    }
}

fn serve(
    stream: std::net::TcpStream,
    config: &Arc<rustls::ServerConfig>,
    routes: &Routes,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let connection = rustls::ServerConnection::new(Arc::clone(config))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        let n = tls.read(&mut buffer)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (status, body, etag) =
        routes
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or((404, "not found".into(), None));
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        if status == 200 { "OK" } else { "Not Found" },
        body.len()
    );
    if let Some(etag) = etag {
        head.push_str(&format!("ETag: {etag}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())?;
    tls.write_all(body.as_bytes())?;
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}
