//! TLS end to end: `[tls]` on the server, `send --tls` on the client, with
//! certificates made at test time (rcgen) for 127.0.0.1.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::support::{Server, Setup, plugboard, stderr, stdout};

/// A CA, a server certificate for 127.0.0.1 and a client certificate it
/// issued, and a client certificate from an unrelated CA; PEM files in `dir`.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = certificate_authority(dir.path(), "ca");
        let other = certificate_authority(dir.path(), "other-ca");
        leaf(dir.path(), "server", &["127.0.0.1", "localhost"], &ca);
        leaf(dir.path(), "client", &["client"], &ca);
        leaf(dir.path(), "stranger", &["client"], &other);
        Self { dir }
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    fn server(&self, setup: Setup, client_ca: bool) -> Server {
        let ca = if client_ca {
            format!("client_ca = {:?}\n", self.path("ca.pem"))
        } else {
            String::new()
        };
        let table = format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n{ca}",
            self.path("server.pem"),
            self.path("server.key")
        );
        setup.tables(&table).start()
    }
}

fn certificate_authority(dir: &Path, name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("plugboard test {name}"));
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).unwrap();
    ca
}

fn leaf(dir: &Path, name: &str, names: &[&str], issuer: &CertifiedIssuer<'_, KeyPair>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

fn onoff() -> Setup {
    Setup::new().plugin("onoff", "onoff")
}

/// `send` over mutual TLS, presenting the certificate `identity` issued.
fn send_as(server: &Server, pki: &Pki, identity: &str, commands: &[&str]) -> Output {
    let ca = pki.arg("ca.pem");
    let cert = pki.arg(&format!("{identity}.pem"));
    let key = pki.arg(&format!("{identity}.key"));
    let mut args = vec!["--ca", &ca, "--cert", &cert, "--key", &key];
    args.extend_from_slice(commands);
    server.send(&args)
}

#[test]
fn send_over_tls_verifies_the_server_against_the_given_ca() {
    let pki = Pki::new();
    let server = pki.server(onoff(), false);
    let ok = server.send(&[
        "--tls",
        "--ca",
        &pki.arg("ca.pem"),
        "-c",
        "on",
        "-c",
        "status",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), "success\non\n");
}

#[test]
fn send_refuses_a_server_it_cannot_verify() {
    let pki = Pki::new();
    let server = pki.server(onoff(), false);
    for args in [
        vec!["--ca", &pki.arg("other-ca.pem")[..], "on"],
        vec!["--tls", "on"],
    ] {
        let refused = server.send(&args);
        assert!(!refused.status.success(), "{args:?}");
        // Without system CA certificates at all, `--tls` refuses before the
        // handshake; either way nothing is sent.
        let why = stderr(&refused);
        assert!(
            why.contains("TLS handshake") || why.contains("no usable system CA"),
            "{why}"
        );
        assert!(refused.stdout.is_empty());
    }
    let ok = server.send(&["--ca", &pki.arg("ca.pem"), "status"]);
    assert_eq!(stdout(&ok), "off\n", "nothing ran: {}", stderr(&ok));
}

/// A TLS listener serves TLS only: what a plain client gets back (a TLS
/// alert at most) is nothing it could read as a reply.
#[test]
fn a_plain_client_gets_nothing_it_could_take_for_a_reply() {
    let pki = Pki::new();
    let server = pki.server(onoff(), false);
    let mut plain = std::net::TcpStream::connect(server.addr).unwrap();
    std::io::Write::write_all(&mut plain, b"on<EOF>status<EOF>").unwrap();
    plain
        .set_read_timeout(Some(crate::support::TIMEOUT))
        .unwrap();
    let mut received = Vec::new();
    let _ = plain.read_to_end(&mut received);
    let text = String::from_utf8_lossy(&received);
    assert!(!text.contains("<EOF>"), "{text:?}");
    let ok = server.send(&["--ca", &pki.arg("ca.pem"), "status"]);
    assert_eq!(stdout(&ok), "off\n", "the plain `on` did not run");
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = Pki::new();
    let server = pki.server(onoff(), true);
    let ca = pki.arg("ca.pem");
    let without = server.send(&["--ca", &ca, "on"]);
    assert!(!without.status.success());
    assert!(without.stdout.is_empty(), "{}", stdout(&without));
    let stranger = send_as(&server, &pki, "stranger", &["on"]);
    assert!(!stranger.status.success());
    assert!(stranger.stdout.is_empty(), "{}", stdout(&stranger));
    let client = send_as(&server, &pki, "client", &["-c", "on", "-c", "status"]);
    assert!(client.status.success(), "{}", stderr(&client));
    assert_eq!(stdout(&client), "success\non\n");
}

#[test]
fn send_over_tls_with_a_token() {
    let pki = Pki::new();
    let token = plugboard()
        .args(["token", "--name", "panel"])
        .output()
        .unwrap();
    let text = String::from_utf8(token.stdout).unwrap();
    let (token, entry) = text.split_once('\n').unwrap();
    let server = pki.server(onoff().tables(entry), false);
    let ca = pki.arg("ca.pem");
    let ok = server.send(&["--ca", &ca, "--token", token, "on"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), "success\n");
    let without = server.send(&["--ca", &ca, "on"]);
    assert_eq!(
        stdout(&without),
        "error: authentication required: send `auth <token>` first\n"
    );
}

/// A client over the limit on a TLS listener is told why inside TLS.
#[test]
fn over_the_limit_a_tls_client_is_told_why_over_tls() {
    let pki = Pki::new();
    let setup = onoff()
        .config("max_connections = 1")
        .config("max_connections_per_ip = 1");
    let server = pki.server(setup, false);
    // Admitted first (connections are accepted in order), and holding the
    // one place while its handshake waits.
    let held = std::net::TcpStream::connect(server.addr).unwrap();
    let ca = pki.arg("ca.pem");
    let refused = server.send(&["--ca", &ca, "status"]);
    assert_eq!(stdout(&refused), "error: too many connections\n");
    drop(held);
}

/// Keys in the common PEM forms load: PKCS#8 (above) and SEC1 (`EC
/// PRIVATE KEY`, as `openssl ec` writes it).
#[test]
fn a_sec1_key_loads_too() {
    let pki = Pki::new();
    let converted = std::process::Command::new("openssl")
        .args([
            "ec",
            "-in",
            &pki.arg("server.key"),
            "-out",
            &pki.arg("server.key"),
        ])
        .output();
    let converted =
        converted.expect("cannot run openssl: `make test` installs it from Debian's packages");
    assert!(converted.status.success(), "{converted:?}");
    let key = std::fs::read_to_string(pki.path("server.key")).unwrap();
    assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
    let server = pki.server(onoff(), false);
    let ok = server.send(&["--ca", &pki.arg("ca.pem"), "on"]);
    assert_eq!(stdout(&ok), "success\n", "{}", stderr(&ok));
}

#[test]
fn a_missing_or_wrong_certificate_fails_startup_naming_the_key() {
    let pki = Pki::new();
    for (cert, key, named) in [
        ("missing.pem", "server.key", "tls.cert"),
        ("server.pem", "client.key", "tls.cert"),
        ("server.pem", "ca.pem", "tls.key"),
    ] {
        let table = format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            pki.path(cert),
            pki.path(key)
        );
        let setup = onoff().tables(&table);
        let config = setup.config_path();
        let output = plugboard()
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains(named),
            "{cert} {key}: {}",
            stderr(&output)
        );
    }
}
