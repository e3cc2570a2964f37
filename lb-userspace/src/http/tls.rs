//! Certificates for the HTTPS listener: every `*.pem` of `--ssl-certs` holds a certificate chain
//! and its key; SNI picks the certificate whose SAN names the host (`*.domain` entries match one
//! label); `default.pem`, else the first file by name, answers clients without a matching name.
//! The directory is re-read on SIGHUP and when a file changes, and the new set is swapped in
//! under the running listener: handshakes in progress finish with the set they started with.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};

/// Why a certificate directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("--ssl-certs {dir}: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("--ssl-certs {dir}: no .pem file (each holds a certificate chain and its key)")]
    Empty { dir: PathBuf },
    #[error("{file}: {why}")]
    File { file: PathBuf, why: String },
}

/// The certificates of one reading of the directory.
pub struct CertSet {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// What was read: a change is noticed by comparing with [`listing`].
    files: Files,
}

/// (file, modification time) of the `*.pem` files of a directory, sorted.
pub type Files = Vec<(PathBuf, Option<SystemTime>)>;

/// The directory's `*.pem` files now (empty if it cannot be read).
pub fn listing(dir: &Path) -> Files {
    pem_files(dir).unwrap_or_default()
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("CertSet").field("names", &names).field("files", &self.files.len()).finish()
    }
}

impl CertSet {
    /// Reads every `*.pem` of `dir`; any file that does not hold a usable chain and key is an
    /// error naming it (a half-read directory is never served).
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let files = pem_files(dir)?;
        let provider = provider();
        let mut by_name = HashMap::new();
        let mut default = None;
        let mut first = None;
        for (file, _) in &files {
            let key = Arc::new(certified_key(file, &provider)?);
            for name in san_names(file, &key)? {
                by_name.entry(name).or_insert_with(|| key.clone());
            }
            if file.file_name().is_some_and(|n| n == "default.pem") {
                default = Some(key.clone());
            }
            first.get_or_insert(key);
        }
        let default = default.or(first).ok_or_else(|| CertError::Empty { dir: dir.to_owned() })?;
        Ok(Self { by_name, default, files })
    }

    /// The files read, with their modification times.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// The certificate for an SNI name (None: the default).
    fn for_name(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else { return self.default.clone() };
        let wildcard = name.split_once('.').map(|(_, domain)| format!("*.{domain}"));
        self.by_name
            .get(&name)
            .or_else(|| wildcard.and_then(|w| self.by_name.get(&w)))
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

/// Picks the certificate by SNI from the current set.
#[derive(Debug)]
pub struct Certs(ArcSwap<CertSet>);

impl Certs {
    pub fn new(set: CertSet) -> Arc<Self> {
        Arc::new(Self(ArcSwap::from_pointee(set)))
    }

    pub fn current(&self) -> Arc<CertSet> {
        self.0.load_full()
    }

    pub fn replace(&self, set: CertSet) {
        self.0.store(Arc::new(set));
    }

    /// A server configuration using these certificates, offering HTTP/2 and HTTP/1.1 (ALPN).
    pub fn server_config(self: &Arc<Self>) -> ServerConfig {
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().for_name(hello.server_name()))
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The `*.pem` files of `dir`, sorted, with their modification times.
fn pem_files(dir: &Path) -> Result<Files, CertError> {
    let read_err = |source| CertError::ReadDir { dir: dir.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().is_some_and(|e| e == "pem") && path.is_file() {
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            files.push((path, modified));
        }
    }
    files.sort();
    Ok(files)
}

fn certified_key(file: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, CertError> {
    let err = |why: String| CertError::File { file: file.to_owned(), why };
    let pem = std::fs::read(file).map_err(|e| err(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| err(format!("reading certificates: {e}")))?;
    if chain.is_empty() {
        return Err(err("no certificate (expected the chain, leaf first, and its key)".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| err(format!("no usable private key: {e}")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| err(format!("certificate and key do not go together: {e}")))
}

/// The DNS names of the leaf's subject alternative names, lower-case.
fn san_names(file: &Path, key: &CertifiedKey) -> Result<Vec<String>, CertError> {
    let leaf = key.end_entity_cert().map_err(|e| CertError::File { file: file.to_owned(), why: e.to_string() })?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| CertError::File { file: file.to_owned(), why: format!("reading the certificate: {e}") })?;
    Ok(cert.valid_dns_names().map(str::to_ascii_lowercase).collect())
}
