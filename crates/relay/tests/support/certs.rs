//! Test certificates made on the spot: a throwaway CA and server certificates it signs (valid,
//! expired), written as PEM files the way an operator would have them. Shared by the relay's
//! TLS tests and the end-to-end tests (included there by path).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};

/// The name the server certificates are issued for.
pub const SERVER_NAME: &str = "sip.sipguard.test";

/// A certificate authority that exists only for one test.
pub struct TestCa {
    certificate: rcgen::Certificate,
    key: KeyPair,
}

/// PEM files of one issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate chain (server certificate, then the CA).
    pub certificate: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        TestCa { certificate, key }
    }

    /// The CA certificate, PEM, for a client's trust store.
    pub fn pem(&self) -> String {
        self.certificate.pem()
    }

    /// Writes `<stem>.crt` and `<stem>.key` in `dir`: a server certificate for [`SERVER_NAME`]
    /// and 127.0.0.1, expired since 2020 when `expired`.
    pub fn issue(&self, dir: &Path, stem: &str, expired: bool) -> Issued {
        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .unwrap();
        let issued = Issued {
            certificate: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&issued.certificate, certificate.pem() + &self.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}
