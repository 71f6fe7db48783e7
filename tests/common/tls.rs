//! TLS on the test's side: a certificate for `localhost` made with `openssl`, signed by a
//! certificate authority of the test's own, and clients (rustls) that trust that authority
//! alone, for `https://` and `wss://` through a real proxy.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::WebSocket;
use tungstenite::client::IntoClientRequest;

use super::temp::TempDir;
use super::{DEADLINE, outside, tcp_from};

/// The name the certificate is for, and that clients ask for.
pub const HOST: &str = "localhost";

/// A TLS connection from the test to a proxy.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A certificate for the proxy, its key, and the authority that signed it, in a directory of
/// their own, removed when dropped.
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub authority: PathBuf,
    _dir: TempDir,
}

impl Certificate {
    /// Makes the authority and the certificate, or says SKIPPED (`None`) where `openssl` is
    /// missing.
    pub fn make(test: &str) -> Option<Certificate> {
        let openssl = outside::found(test, "openssl", "version", "apt-get install -y openssl")?;
        let run = |args: &[&str], key: &[&str], files: &[(&str, &Path)]| {
            run_openssl(&openssl, args, key, files);
        };
        let temp = TempDir::new("certificate");
        let dir = temp.path();
        let ca = dir.join("ca.pem");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let names = dir.join("names.cnf");
        std::fs::write(
            &names,
            format!("subjectAltName=DNS:{HOST},IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"),
        )
        .unwrap();
        // P-256 keys: a class arriving at once is hundreds of TLS handshakes, and an ECDSA
        // signature costs the proxy a fraction of an RSA one.
        let key_options = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let ca_key = dir.join("ca-key.pem");
        let request = dir.join("cert.csr");
        run(
            &[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=Cyber Chat test authority",
            ],
            &key_options,
            &[("-keyout", &ca_key), ("-out", &ca)],
        );
        run(
            &["req", "-subj", &format!("/CN={HOST}")],
            &key_options,
            &[("-keyout", &key), ("-out", &request)],
        );
        run(
            &["x509", "-req", "-days", "2", "-set_serial", "1"],
            &[],
            &[
                ("-in", &request),
                ("-CA", &ca),
                ("-CAkey", &ca_key),
                ("-extfile", &names),
                ("-out", &cert),
            ],
        );
        Some(Certificate {
            cert,
            key,
            authority: ca,
            _dir: temp,
        })
    }

    /// A client that trusts this certificate's authority.
    pub fn client(&self) -> TlsClient {
        TlsClient::trusting(&self.authority)
    }
}

/// A TLS client that trusts one authority alone.
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl TlsClient {
    /// Trusting the authority whose certificate (PEM) is in `authority`.
    pub fn trusting(authority: &Path) -> TlsClient {
        let mut roots = RootCertStore::empty();
        let authority = CertificateDer::from_pem_file(authority)
            .unwrap_or_else(|err| panic!("{}: {err}", authority.display()));
        roots
            .add(authority)
            .expect("the authority is a certificate");
        // ring, for a build without aws-lc's C toolchain. Its provider is deprecated for want
        // of post-quantum key exchange, which a test on the loopback does not need.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsClient {
            config: Arc::new(config),
        }
    }

    /// A TLS connection to `addr` from the local address `from`, its handshake done.
    ///
    /// # Errors
    /// The connection's or the handshake's, the certificate's verification included.
    pub fn connect_from(&self, from: Ipv4Addr, addr: SocketAddr) -> io::Result<TlsStream> {
        let tcp = tcp_from(from, addr)?;
        tcp.set_read_timeout(Some(DEADLINE))?;
        let name = ServerName::try_from(HOST).expect("a valid name");
        let connection = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|err| io::Error::other(err.to_string()))?;
        let mut stream = StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }

    /// `GET path` over https from `from`; the whole answer, head and body.
    ///
    /// # Errors
    /// The connection's, or the TLS layer's.
    pub fn get_from(&self, from: Ipv4Addr, addr: SocketAddr, path: &str) -> io::Result<String> {
        let mut stream = self.connect_from(from, addr)?;
        let port = addr.port();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            // A peer that closes without TLS's close_notify has still said all it had.
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {}
            other => {
                other?;
            }
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    /// A WebSocket over TLS (`wss://localhost:PORT{path_and_query}`) from `from`.
    ///
    /// # Errors
    /// The connection's, or the handshake's: a refusal is `tungstenite::Error::Http`, with
    /// the status and the body.
    pub fn wss_from(
        &self,
        from: Ipv4Addr,
        addr: SocketAddr,
        path_and_query: &str,
    ) -> Result<WebSocket<TlsStream>, tungstenite::Error> {
        wss_over(self.connect_from(from, addr)?, path_and_query)
    }

    /// Like [`TlsClient::wss_from`], with `headers` added to the request (what a client may
    /// claim, such as its own `X-Forwarded-For`).
    ///
    /// # Errors
    /// As [`TlsClient::wss_from`].
    pub fn wss_from_with(
        &self,
        from: Ipv4Addr,
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WebSocket<TlsStream>, tungstenite::Error> {
        wss_over_with(self.connect_from(from, addr)?, path_and_query, headers)
    }
}

/// The WebSocket handshake (`wss://localhost:PORT{path_and_query}`) on a TLS connection.
///
/// # Errors
/// The handshake's: a refusal is `tungstenite::Error::Http`, with the status and the body.
pub fn wss_over(
    stream: TlsStream,
    path_and_query: &str,
) -> Result<WebSocket<TlsStream>, tungstenite::Error> {
    wss_over_with(stream, path_and_query, &[])
}

/// Like [`wss_over`], with `headers` added to the request.
fn wss_over_with(
    stream: TlsStream,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocket<TlsStream>, tungstenite::Error> {
    let port = stream.sock.peer_addr()?.port();
    let mut request = format!("wss://{HOST}:{port}{path_and_query}").into_client_request()?;
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .expect("a valid header name");
        request
            .headers_mut()
            .insert(name, value.parse().expect("a valid header value"));
    }
    let (ws, _) = tungstenite::client(request, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })?;
    Ok(ws)
}

/// Runs `openssl {args} {key_options} {files as flag, path}`.
///
/// # Panics
/// When it fails, with what it said.
fn run_openssl(openssl: &Path, args: &[&str], key_options: &[&str], files: &[(&str, &Path)]) {
    let mut command = Command::new(openssl);
    command.args(args).args(key_options);
    for (flag, path) in files {
        command.arg(flag).arg(path);
    }
    let out = command.stdin(Stdio::null()).output().expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
