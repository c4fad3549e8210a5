//! TLS termination for one listener: certificates chosen by SNI, optional client-certificate
//! verification (mTLS), and hot reload of the PEM files without dropping live connections.
//!
//! The current [`ServerConfig`] sits behind an [`ArcSwap`]: every new connection takes the latest
//! good config, connections already established keep the one they were accepted with, and a reload
//! that fails (half-written file, key that does not match its certificate) leaves the old config
//! in place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::Watcher as _;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// ALPN identifiers offered to clients, in server preference order.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// Quiet period after a file-system event before reloading: editors and secret managers write
/// certificate and key in several steps, and one reload after the burst is enough.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Upper bound on the debounce so a directory that never goes quiet still gets reloaded.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);
/// Fallback poll of the files' content, for file systems where notify sees nothing (NFS, some
/// container volume drivers).
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// TLS settings of one listener, as produced by the config model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Served certificates; the first one is the default when SNI is absent or matches none.
    pub certs: Vec<CertPair>,
    /// PEM bundle of CA certificates; when set, every client must present a certificate chaining
    /// to one of them.
    pub client_ca: Option<PathBuf>,
    /// Let returning clients resume a session instead of a full handshake (rustls' in-memory
    /// session cache and TLS 1.3 tickets). Off forces a full handshake on every connection.
    pub session_resumption: bool,
}

/// A PEM certificate chain (leaf first) and the PEM private key of its leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why TLS material could not be loaded; every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS is enabled but no certificate is configured")]
    NoCertificates,
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error("private key {} does not match certificate {}: {problem}", key.display(), cert.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        problem: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Live TLS state of one listener: the current rustls config, reloaded when its files change.
#[derive(Debug)]
pub struct TlsTerminator {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<ServerConfig>,
    /// Content fingerprints of the files at the last load attempt; the mutex also serialises
    /// reloads so an older read can never overwrite a newer one.
    loaded: Mutex<Vec<FileStamp>>,
    /// Outcome of the last reload attempt, for `/admin/status`: a rotation that failed must
    /// be visible without reading the log.
    last_reload: Mutex<Option<CertReload>>,
}

/// One certificate reload attempt.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CertReload {
    pub ok: bool,
    /// RFC 3339, seconds.
    pub at: String,
    pub error: Option<String>,
}

impl TlsTerminator {
    /// Loads and validates every file; the error names the file and the problem.
    pub fn new(settings: TlsSettings) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(server_provider());
        let stamps = stamp_files(&settings);
        let config = build_config(&settings, &provider)?;
        Ok(Arc::new(Self {
            settings,
            provider,
            current: ArcSwap::new(config),
            loaded: Mutex::new(stamps),
            last_reload: Mutex::new(None),
        }))
    }

    /// Acceptor for a new connection, using the latest good config.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// The latest good config, for callers that drive rustls themselves.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads every file; on error the previous config stays in service and the error is
    /// returned for the caller to log.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut loaded = self.lock_loaded();
        let stamps = stamp_files(&self.settings);
        self.reload_locked(&mut loaded, stamps)
    }

    /// Reloads only when some file's content changed since the last attempt. `None` means
    /// nothing changed; used by the watcher so spurious events and polls cost a few small
    /// reads instead of a rebuild.
    fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let mut loaded = self.lock_loaded();
        let stamps = stamp_files(&self.settings);
        if *loaded == stamps {
            return None;
        }
        Some(self.reload_locked(&mut loaded, stamps))
    }

    fn reload_locked(
        &self,
        loaded: &mut MutexGuard<'_, Vec<FileStamp>>,
        stamps: Vec<FileStamp>,
    ) -> Result<(), TlsError> {
        // The stamp is recorded even on failure: a broken file is reported once, not every
        // poll, and the next write to it changes the stamp again.
        **loaded = stamps;
        let config = build_config(&self.settings, &self.provider)?;
        self.current.store(config);
        Ok(())
    }

    /// The outcome of the last reload attempt (`None` until a file changed).
    pub fn last_reload(&self) -> Option<CertReload> {
        self.last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, result: &Result<(), TlsError>) {
        let entry = CertReload {
            ok: result.is_ok(),
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            error: result.as_ref().err().map(ToString::to_string),
        };
        *self
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(entry);
    }

    fn lock_loaded(&self) -> MutexGuard<'_, Vec<FileStamp>> {
        // The guarded data is only a cache of fingerprints: a panic elsewhere cannot corrupt it.
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn files(&self) -> impl Iterator<Item = &Path> {
        settings_files(&self.settings)
    }

    /// Spawns a watcher (notify on the parent directories of every file, debounced, plus a
    /// periodic content poll as a fallback) that reloads on change and logs the outcome.
    /// Must be called inside a tokio runtime; dropping the guard stops the watcher.
    pub fn watch(self: &Arc<Self>) -> WatchGuard {
        self.watch_with(true, POLL_INTERVAL)
    }

    /// [`Self::watch`] with the two mechanisms adjustable, so tests can exercise each alone.
    fn watch_with(self: &Arc<Self>, use_notify: bool, poll_interval: Duration) -> WatchGuard {
        let (tx, rx) = mpsc::channel(1);
        let watcher = if use_notify {
            match start_notify(self.files(), tx) {
                Ok(watcher) => Some(watcher),
                Err(error) => {
                    tracing::warn!(%error, "cannot watch TLS files for changes; polling only");
                    None
                }
            }
        } else {
            None
        };
        let task = tokio::spawn(watch_loop(Arc::downgrade(self), rx, poll_interval));
        WatchGuard {
            task,
            _watcher: watcher,
        }
    }
}

/// Keeps a [`TlsTerminator::watch`] running; dropping it stops the watcher and its task.
#[derive(Debug)]
pub struct WatchGuard {
    task: tokio::task::JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_notify<'a>(
    files: impl Iterator<Item = &'a Path>,
    tx: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => is_modifying(&event.kind),
            // An error may hide a change: let the content check decide.
            Err(_) => true,
        };
        if relevant {
            // A full channel already holds a pending wake-up, which is all that is needed.
            let _ = tx.try_send(());
        }
    })?;
    // Parent directories, not the files: replacing a file by rename (and Kubernetes' symlink
    // swap of `..data`) detaches a watch placed on the file itself.
    let mut dirs: Vec<PathBuf> = files.map(parent_dir).collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Reads by the reloader itself show up as access events; only writes, creations, renames and
/// removals can change what is served.
fn is_modifying(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

async fn watch_loop(
    terminator: Weak<TlsTerminator>,
    mut events: mpsc::Receiver<()>,
    poll_interval: Duration,
) {
    // The first tick is immediate: it catches a change made between load and watch.
    let mut poll = tokio::time::interval(poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut notify_open = true;
    loop {
        tokio::select! {
            event = events.recv(), if notify_open => match event {
                Some(()) => debounce(&mut events).await,
                None => {
                    notify_open = false;
                    continue;
                }
            },
            _ = poll.tick() => {}
        }
        let Some(terminator) = terminator.upgrade() else {
            return;
        };
        // File reads and certificate parsing are blocking work.
        let outcome = tokio::task::spawn_blocking(move || {
            let r = terminator.reload_if_changed();
            if let Some(r) = &r {
                terminator.record(r);
            }
            r
        })
        .await;
        match outcome {
            Ok(None) => {}
            Ok(Some(Ok(()))) => tracing::info!("TLS certificates reloaded"),
            Ok(Some(Err(error))) => {
                tracing::warn!(%error, "TLS reload failed; still serving the previous certificates")
            }
            Err(error) => tracing::error!(%error, "TLS reload task failed"),
        }
    }
}

/// Waits until events stop for [`DEBOUNCE`], or [`MAX_DEBOUNCE`] at most.
async fn debounce(events: &mut mpsc::Receiver<()>) {
    let deadline = Instant::now() + MAX_DEBOUNCE;
    loop {
        let quiet_at = (Instant::now() + DEBOUNCE).min(deadline);
        match tokio::time::timeout_at(quiet_at, events.recv()).await {
            Ok(Some(())) if Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

/// Fingerprint of one file's content (`None` when unreadable). Content rather than mtime: the
/// kernel's coarse mtime clock can give two quick in-place writes the same timestamp, and the
/// files are small enough to hash on every poll.
type FileStamp = Option<u64>;

fn stamp_files(settings: &TlsSettings) -> Vec<FileStamp> {
    settings_files(settings).map(stamp_file).collect()
}

fn stamp_file(path: &Path) -> FileStamp {
    use std::hash::{Hash, Hasher};
    // `read` follows symlinks, so a swapped symlink target is seen as a change.
    let content = std::fs::read(path).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    content.hash(&mut hasher);
    Some(hasher.finish())
}

fn settings_files(settings: &TlsSettings) -> impl Iterator<Item = &Path> {
    settings
        .certs
        .iter()
        .flat_map(|pair| [pair.cert.as_path(), pair.key.as_path()])
        .chain(settings.client_ca.as_deref())
}

/// rustls on aws-lc-rs with Mozilla's "intermediate" cipher suite order: AES-128-GCM before
/// AES-256-GCM before ChaCha20, TLS 1.3 first. Every suite here is strong; the AES-128 ones use
/// SHA-256 for the handshake's key schedule, which has CPU instructions (SHA-NI) almost
/// everywhere, where SHA-384 does not: a cheaper full handshake for the same security level.
fn server_provider() -> CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

fn build_config(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    if settings.certs.is_empty() {
        return Err(TlsError::NoCertificates);
    }
    let entries = settings
        .certs
        .iter()
        .map(|pair| load_pair(pair, provider))
        .collect::<Result<Vec<_>, _>>()?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &settings.client_ca {
        Some(ca) => builder.with_client_cert_verifier(load_client_verifier(ca, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver::new(entries)));
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    // Our cipher suite order (`server_provider`), not the client's: testssl rates client order HIGH.
    config.ignore_client_order = true;
    if !settings.session_resumption {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Loads one certificate/key pair and the DNS names its leaf is valid for.
fn load_pair(
    pair: &CertPair,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let chain = load_certs(&pair.cert)?;
    let mut names = Vec::new();
    for (position, der) in chain.iter().enumerate() {
        let info = inspect_certificate(der).map_err(|problem| {
            invalid(
                &pair.cert,
                format!("certificate #{}: {problem}", position + 1),
            )
        })?;
        if !info.currently_valid {
            tracing::warn!(
                file = %pair.cert.display(),
                certificate = position + 1,
                "certificate is outside its validity period; clients will reject it"
            );
        }
        if position == 0 {
            names = info.names;
        }
    }

    let key_pem = read_file(&pair.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => invalid(
            &pair.key,
            "no PRIVATE KEY block found (PKCS#8, PKCS#1 or SEC1 expected)",
        ),
        other => invalid(&pair.key, format!("malformed PEM: {other}")),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(&pair.key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Some key types cannot report their public key; rustls itself accepts those.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(TlsError::KeyMismatch {
                cert: pair.cert.clone(),
                key: pair.key.clone(),
                problem: e.to_string(),
            });
        }
    }
    Ok((Arc::new(certified), names))
}

struct CertInfo {
    /// Lower-cased DNS names (possibly `*.` wildcards) the certificate is issued for.
    names: Vec<String>,
    currently_valid: bool,
}

fn inspect_certificate(der: &[u8]) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("invalid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("invalid subjectAltName extension: {e}"))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(normalize_name(dns));
            }
        }
    }
    // RFC 6125: the CN counts only when the certificate has no DNS SAN, as clients do.
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(normalize_name(cn));
            }
        }
    }
    Ok(CertInfo {
        names,
        currently_valid: cert.validity().is_valid(),
    })
}

/// DNS names compare case-insensitively, and a trailing dot denotes the same name.
fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn load_client_verifier(
    ca: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| invalid(ca, format!("unusable CA certificate: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid(ca, format!("cannot verify clients with this CA: {e}")))
}

/// Picks the certificate whose names match the SNI host: exact names first, then a `*.`
/// wildcard covering exactly one leading label, else the first configured certificate.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    /// `entries` must not be empty. When several certificates claim a name, the first one
    /// configured wins, so the order in the config is the tie-breaker.
    fn new(entries: Vec<(Arc<CertifiedKey>, Vec<String>)>) -> Self {
        let mut keys = Vec::with_capacity(entries.len());
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (index, (key, names)) in entries.into_iter().enumerate() {
            keys.push(key);
            for name in names {
                if let Some(parent) = name.strip_prefix("*.") {
                    if !parent.is_empty() && !parent.contains('*') {
                        wildcard.entry(parent.to_string()).or_insert(index);
                    }
                } else if !name.is_empty() && !name.contains('*') {
                    // Partial-label wildcards (`w*.example.com`) are not honoured by clients.
                    exact.entry(name).or_insert(index);
                }
            }
        }
        Self {
            keys,
            exact,
            wildcard,
        }
    }

    fn index_for(&self, server_name: Option<&str>) -> usize {
        let Some(name) = server_name else {
            return 0;
        };
        let name = normalize_name(name);
        if let Some(&index) = self.exact.get(&name) {
            return index;
        }
        match name.split_once('.') {
            Some((label, parent)) if !label.is_empty() => {
                self.wildcard.get(parent).copied().unwrap_or(0)
            }
            _ => 0,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.keys
            .get(self.index_for(client_hello.server_name()))
            .cloned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme};
    use rustls_pki_types::{ServerName, UnixTime};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A test certificate authority issuing server and client certificates.
    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Self {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Leaf {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![purpose];
            self.sign(params)
        }

        fn server(&self, names: &[&str]) -> Leaf {
            self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
        }

        fn sign(&self, params: CertificateParams) -> Leaf {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
            }
        }

        fn roots(&self) -> RootCertStore {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            roots
        }
    }

    fn write_pair(dir: &Path, stem: &str, leaf: &Leaf) -> CertPair {
        let pair = CertPair {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&pair.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&pair.key, &leaf.key_pem).unwrap();
        pair
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// What the server saw of one accepted handshake.
    #[derive(Debug)]
    struct Accepted {
        client_certs: usize,
    }

    /// Accepts TLS connections forever with the terminator's current acceptor, reporting each
    /// handshake outcome (rustls error text on failure) and greeting successful clients.
    async fn serve(
        terminator: Arc<TlsTerminator>,
    ) -> (
        SocketAddr,
        mpsc::UnboundedReceiver<Result<Accepted, String>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = terminator.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut stream) => {
                            let client_certs = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .map_or(0, |c| c.len());
                            let _ = tx.send(Ok(Accepted { client_certs }));
                            let _ = stream.write_all(b"hello").await;
                            let _ = stream.shutdown().await;
                        }
                        Err(e) => {
                            let detail = e
                                .get_ref()
                                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                                .map_or_else(|| e.to_string(), |tls| format!("{tls:?}"));
                            let _ = tx.send(Err(detail));
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// What the client saw of one successful connection.
    #[derive(Debug)]
    struct Connected {
        leaf: CertificateDer<'static>,
        alpn: Option<Vec<u8>>,
        version: Option<ProtocolVersion>,
        kind: Option<rustls::HandshakeKind>,
        suite: Option<rustls::CipherSuite>,
    }

    async fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> std::io::Result<Connected> {
        let tcp = TcpStream::connect(addr).await?;
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await?;
        let conn = tls.get_ref().1;
        let connected = Connected {
            leaf: conn.peer_certificates().unwrap()[0].clone(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: conn.protocol_version(),
            kind: conn.handshake_kind(),
            suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
        };
        // Reading surfaces a rejection the server sends after a TLS 1.3 client has finished.
        let mut greeting = Vec::new();
        tls.read_to_end(&mut greeting).await?;
        if greeting != b"hello" {
            return Err(std::io::Error::other(format!("greeting {greeting:?}")));
        }
        Ok(connected)
    }

    fn client(ca: &Ca) -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(ca.roots())
            .with_no_client_auth()
    }

    /// Accepts any server certificate (signatures still checked) so a test can see which
    /// certificate was served for a name that no certificate covers.
    #[derive(Debug)]
    struct AnyServerCert(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyServerCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    fn trusting_client() -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
            .with_no_client_auth()
    }

    /// Two certificates (exact and wildcard names) in a fresh directory.
    struct Fixture {
        dir: tempfile::TempDir,
        ca: Ca,
        alpha: Leaf,
        beta: Leaf,
        settings: TlsSettings,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("Weir test CA");
        let alpha = ca.server(&["alpha.test"]);
        let beta = ca.server(&["beta.test", "*.beta.test"]);
        let settings = TlsSettings {
            certs: vec![
                write_pair(dir.path(), "alpha", &alpha),
                write_pair(dir.path(), "beta", &beta),
            ],
            client_ca: None,
            session_resumption: true,
        };
        Fixture {
            dir,
            ca,
            alpha,
            beta,
            settings,
        }
    }

    #[tokio::test]
    async fn sni_selects_the_matching_certificate() {
        let fx = fixture();
        let (addr, _seen) = serve(TlsTerminator::new(fx.settings.clone()).unwrap()).await;
        let verifying = Arc::new(client(&fx.ca));

        // The verifying client proves the served certificate is valid for the requested name.
        let alpha = connect(addr, verifying.clone(), "alpha.test")
            .await
            .unwrap();
        assert_eq!(alpha.leaf, fx.alpha.der);
        let beta = connect(addr, verifying.clone(), "beta.test").await.unwrap();
        assert_eq!(beta.leaf, fx.beta.der);
        let wild = connect(addr, verifying.clone(), "API.Beta.Test")
            .await
            .unwrap();
        assert_eq!(wild.leaf, fx.beta.der);

        // Unknown names and a client sending no SNI get the first certificate.
        let trusting = Arc::new(trusting_client());
        let unknown = connect(addr, trusting.clone(), "other.test").await.unwrap();
        assert_eq!(unknown.leaf, fx.alpha.der);
        let deep = connect(addr, trusting.clone(), "a.b.beta.test")
            .await
            .unwrap();
        assert_eq!(deep.leaf, fx.alpha.der);
        let no_sni = connect(addr, trusting, "127.0.0.1").await.unwrap();
        assert_eq!(no_sni.leaf, fx.alpha.der);
    }

    #[test]
    fn resolver_index_rules() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("CA");
        let mut cn_only = CertificateParams::default();
        cn_only.distinguished_name = rcgen::DistinguishedName::new();
        cn_only
            .distinguished_name
            .push(DnType::CommonName, "Legacy.Test");
        let leaves = [
            ca.server(&["first.test"]),
            ca.server(&["*.wild.test", "exact.wild.test."]),
            ca.sign(cn_only),
            ca.server(&["first.test", "w*.partial.test"]),
        ];
        let entries = leaves
            .iter()
            .enumerate()
            .map(|(i, leaf)| {
                let pair = write_pair(dir.path(), &i.to_string(), leaf);
                load_pair(&pair, &provider()).unwrap()
            })
            .collect();
        let resolver = SniResolver::new(entries);
        assert_eq!(
            resolver.index_for(Some("first.test")),
            0,
            "first wins a tie"
        );
        assert_eq!(resolver.index_for(Some("exact.wild.test")), 1);
        assert_eq!(resolver.index_for(Some("x.wild.test")), 1);
        assert_eq!(resolver.index_for(Some("X.WILD.TEST.")), 1);
        assert_eq!(
            resolver.index_for(Some("wild.test")),
            0,
            "wildcard needs a label"
        );
        assert_eq!(
            resolver.index_for(Some("a.x.wild.test")),
            0,
            "one label only"
        );
        assert_eq!(resolver.index_for(Some("legacy.test")), 2, "CN without SAN");
        assert_eq!(resolver.index_for(Some("wx.partial.test")), 0);
        assert_eq!(resolver.index_for(None), 0);
    }

    #[tokio::test]
    async fn tls12_client_accepted_and_alpn_negotiated() {
        let fx = fixture();
        let (addr, _seen) = serve(TlsTerminator::new(fx.settings.clone()).unwrap()).await;

        let mut tls12 = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(fx.ca.roots())
            .with_no_client_auth();
        tls12.alpn_protocols = vec![b"http/1.1".to_vec()];
        let seen = connect(addr, Arc::new(tls12), "alpha.test").await.unwrap();
        assert_eq!(seen.version, Some(ProtocolVersion::TLSv1_2));
        assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));

        let mut both = client(&fx.ca);
        both.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let seen = connect(addr, Arc::new(both), "alpha.test").await.unwrap();
        assert_eq!(seen.version, Some(ProtocolVersion::TLSv1_3));
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));

        let seen = connect(addr, Arc::new(client(&fx.ca)), "alpha.test")
            .await
            .unwrap();
        assert_eq!(seen.alpn, None, "no ALPN offered, none chosen");
    }

    #[tokio::test]
    async fn server_cipher_suite_order_wins() {
        use rustls::CipherSuite as C;
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        let fx = fixture();
        let (addr, _seen) = serve(TlsTerminator::new(fx.settings.clone()).unwrap()).await;
        let client_prefers = |suites: &[rustls::SupportedCipherSuite]| {
            let provider = CryptoProvider {
                cipher_suites: suites.to_vec(),
                ..rustls::crypto::aws_lc_rs::default_provider()
            };
            let version = match suites[0] {
                rustls::SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
                rustls::SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
            };
            ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(fx.ca.roots())
                .with_no_client_auth()
        };
        // The client lists AES-256 (and ChaCha20) first; the server's AES-128 choice wins.
        for (offered, want) in [
            (
                vec![
                    cs::TLS13_CHACHA20_POLY1305_SHA256,
                    cs::TLS13_AES_256_GCM_SHA384,
                    cs::TLS13_AES_128_GCM_SHA256,
                ],
                C::TLS13_AES_128_GCM_SHA256,
            ),
            (
                vec![
                    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ],
                C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ),
        ] {
            let seen = connect(addr, Arc::new(client_prefers(&offered)), "alpha.test")
                .await
                .unwrap();
            assert_eq!(seen.suite, Some(want));
        }
    }

    #[tokio::test]
    async fn session_resumption_can_be_turned_off() {
        use rustls::HandshakeKind::{Full, Resumed};
        let fx = fixture();
        let tls12 = || {
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(fx.ca.roots())
                .with_no_client_auth()
        };
        for (resumption, second) in [(true, Resumed), (false, Full)] {
            let settings = TlsSettings {
                session_resumption: resumption,
                ..fx.settings.clone()
            };
            let (addr, _seen) = serve(TlsTerminator::new(settings).unwrap()).await;
            for (version, config) in [("1.3", client(&fx.ca)), ("1.2", tls12())] {
                // One client config keeps its session cache across both connections.
                let config = Arc::new(config);
                let first = connect(addr, config.clone(), "alpha.test").await.unwrap();
                let again = connect(addr, config, "alpha.test").await.unwrap();
                assert_eq!(first.kind, Some(Full), "TLS {version}, first connection");
                assert_eq!(
                    again.kind,
                    Some(second),
                    "TLS {version}, second connection, session_resumption = {resumption}"
                );
            }
        }
    }

    /// Runs `openssl s_client` against `addr` with extra arguments; `None` if openssl is absent.
    async fn openssl_client(addr: SocketAddr, args: &[&str]) -> Option<std::process::Output> {
        let connect = addr.to_string();
        let mut command = tokio::process::Command::new("openssl");
        command
            .args([
                "s_client",
                "-connect",
                &connect,
                "-servername",
                "alpha.test",
            ])
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(20), command.output()).await {
            Ok(Ok(output)) => Some(output),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
            Ok(Err(e)) => panic!("cannot run openssl: {e}"),
            Err(_) => panic!("openssl s_client timed out"),
        }
    }

    #[tokio::test]
    async fn tls11_client_refused() {
        let fx = fixture();
        let (addr, mut seen) = serve(TlsTerminator::new(fx.settings.clone()).unwrap()).await;
        // SECLEVEL=0 lets OpenSSL 3 actually offer TLS 1.1, so the refusal is the server's;
        // `-msg` shows the hello that was sent.
        let Some(old) =
            openssl_client(addr, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-msg"]).await
        else {
            eprintln!("openssl not installed; skipping the TLS 1.1 interop check");
            return;
        };
        let transcript = String::from_utf8_lossy(&old.stdout);
        assert!(
            transcript.contains("TLS 1.1, Handshake") && transcript.contains("ClientHello"),
            "openssl did not send a TLS 1.1 ClientHello: {transcript}"
        );
        assert!(
            !old.status.success(),
            "TLS 1.1 handshake succeeded: {transcript}"
        );
        // rustls rejects the hello as incompatible (a TLS 1.1 hello lacks what 1.2+ requires).
        let server_side = seen.recv().await.unwrap().unwrap_err();
        assert!(
            server_side.starts_with("PeerIncompatible("),
            "server refused for another reason: {server_side}"
        );

        // Control: the same openssl client succeeds when it may use TLS 1.2.
        let modern = openssl_client(addr, &["-tls1_2"]).await.unwrap();
        let stdout = String::from_utf8_lossy(&modern.stdout);
        assert!(
            modern.status.success(),
            "TLS 1.2 handshake failed: {stdout}"
        );
        assert!(stdout.contains("TLSv1.2"), "{stdout}");
        assert!(seen.recv().await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn mtls_requires_a_certificate_from_the_ca() {
        let fx = fixture();
        let ca_file = fx.dir.path().join("clients-ca.pem");
        let client_ca = Ca::new("Weir client CA");
        std::fs::write(&ca_file, &client_ca.pem).unwrap();
        let settings = TlsSettings {
            client_ca: Some(ca_file),
            ..fx.settings.clone()
        };
        let (addr, mut seen) = serve(TlsTerminator::new(settings).unwrap()).await;

        let anonymous = connect(addr, Arc::new(client(&fx.ca)), "alpha.test").await;
        assert!(anonymous.is_err(), "client without certificate accepted");
        let refusal = seen.recv().await.unwrap().unwrap_err();
        assert!(refusal.contains("NoCertificatesPresented"), "{refusal}");

        let with_cert = |issuer: &Ca| {
            let leaf = issuer.issue(&["client.test"], ExtendedKeyUsagePurpose::ClientAuth);
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            Arc::new(
                ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(fx.ca.roots())
                    .with_client_auth_cert(vec![leaf.der.clone()], key)
                    .unwrap(),
            )
        };

        let stranger = connect(addr, with_cert(&fx.ca), "alpha.test").await;
        assert!(stranger.is_err(), "certificate from another CA accepted");
        let refusal = seen.recv().await.unwrap().unwrap_err();
        assert!(refusal.contains("InvalidCertificate"), "{refusal}");

        connect(addr, with_cert(&client_ca), "alpha.test")
            .await
            .unwrap();
        let accepted = seen.recv().await.unwrap().unwrap();
        assert_eq!(accepted.client_certs, 1);
    }

    #[tokio::test]
    async fn reload_serves_new_files_and_keeps_old_config_on_error() {
        let fx = fixture();
        let terminator = TlsTerminator::new(fx.settings.clone()).unwrap();
        let (addr, _seen) = serve(terminator.clone()).await;
        let verifying = Arc::new(client(&fx.ca));
        assert_eq!(terminator.reload_if_changed().map(|r| r.is_ok()), None);

        let renewed = fx.ca.server(&["alpha.test"]);
        let alpha_pair = &fx.settings.certs[0];
        write_pair(fx.dir.path(), "alpha", &renewed);
        // Nothing changes for new connections until the reload.
        let before = connect(addr, verifying.clone(), "alpha.test")
            .await
            .unwrap();
        assert_eq!(before.leaf, fx.alpha.der);
        terminator.reload().unwrap();
        let after = connect(addr, verifying.clone(), "alpha.test")
            .await
            .unwrap();
        assert_eq!(after.leaf, renewed.der);

        // A key that belongs to another certificate is refused and the old config stays.
        std::fs::write(&alpha_pair.key, &fx.beta.key_pem).unwrap();
        let error = terminator.reload().unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        assert!(error.to_string().contains("alpha.key"), "{error}");
        let still = connect(addr, verifying.clone(), "alpha.test")
            .await
            .unwrap();
        assert_eq!(still.leaf, renewed.der);

        // The content check used by the watcher sees the repaired file.
        assert_eq!(terminator.reload_if_changed().map(|r| r.is_ok()), None);
        std::fs::write(&alpha_pair.key, &renewed.key_pem).unwrap();
        assert_eq!(
            terminator.reload_if_changed().map(|r| r.is_ok()),
            Some(true)
        );
    }

    /// Connects until `name` is served `expected` (10 s at most); any other certificate seen
    /// meanwhile must be `previous`.
    async fn wait_for_certificate(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        name: &str,
        previous: &CertificateDer<'static>,
        expected: &CertificateDer<'static>,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = connect(addr, config.clone(), name).await.unwrap();
            if seen.leaf == *expected {
                return;
            }
            assert_eq!(seen.leaf, *previous);
            assert!(Instant::now() < deadline, "watcher did not reload in 10 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn notify_watcher_picks_up_rewritten_files() {
        let fx = fixture();
        let terminator = TlsTerminator::new(fx.settings.clone()).unwrap();
        // A poll far beyond the deadline: only a file-system event can trigger the reload.
        let _guard = terminator.watch_with(true, Duration::from_secs(3600));
        let (addr, _seen) = serve(terminator.clone()).await;
        let verifying = Arc::new(client(&fx.ca));
        // Let the watcher task start and take its initial look before the files change.
        tokio::time::sleep(Duration::from_millis(300)).await;

        let renewed = fx.ca.server(&["beta.test", "*.beta.test"]);
        // Written in place, certificate first: the watcher may see a mismatched pair midway.
        write_pair(fx.dir.path(), "beta", &renewed);
        wait_for_certificate(addr, verifying, "x.beta.test", &fx.beta.der, &renewed.der).await;
    }

    #[tokio::test]
    async fn poll_fallback_picks_up_renamed_files() {
        let fx = fixture();
        let terminator = TlsTerminator::new(fx.settings.clone()).unwrap();
        let _guard = terminator.watch_with(false, Duration::from_millis(200));
        let (addr, _seen) = serve(terminator.clone()).await;
        let verifying = Arc::new(client(&fx.ca));
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Replaced atomically by rename, as most deployment tools do.
        let renewed = fx.ca.server(&["alpha.test"]);
        let staging = tempfile::tempdir_in(fx.dir.path()).unwrap();
        let staged = write_pair(staging.path(), "alpha", &renewed);
        std::fs::rename(&staged.key, &fx.settings.certs[0].key).unwrap();
        std::fs::rename(&staged.cert, &fx.settings.certs[0].cert).unwrap();
        wait_for_certificate(addr, verifying, "alpha.test", &fx.alpha.der, &renewed.der).await;
    }

    #[test]
    fn load_errors_name_the_file() {
        let fx = fixture();
        let missing = TlsSettings {
            certs: vec![CertPair {
                cert: fx.dir.path().join("nope.crt"),
                key: fx.settings.certs[0].key.clone(),
            }],
            client_ca: None,
            session_resumption: true,
        };
        let error = TlsTerminator::new(missing).unwrap_err();
        assert!(matches!(error, TlsError::Read { .. }));
        assert!(error.to_string().contains("nope.crt"), "{error}");

        let garbage = fx.dir.path().join("garbage.crt");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let error = TlsTerminator::new(TlsSettings {
            certs: vec![CertPair {
                cert: garbage,
                key: fx.settings.certs[0].key.clone(),
            }],
            client_ca: None,
            session_resumption: true,
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("garbage.crt: no CERTIFICATE"),
            "{error}"
        );

        let error = TlsTerminator::new(TlsSettings {
            certs: vec![CertPair {
                cert: fx.settings.certs[0].cert.clone(),
                key: fx.settings.certs[0].cert.clone(),
            }],
            client_ca: None,
            session_resumption: true,
        })
        .unwrap_err();
        assert!(error.to_string().contains("no PRIVATE KEY"), "{error}");

        let error = TlsTerminator::new(TlsSettings {
            certs: vec![],
            client_ca: None,
            session_resumption: true,
        })
        .unwrap_err();
        assert!(matches!(error, TlsError::NoCertificates));

        let error = TlsTerminator::new(TlsSettings {
            client_ca: Some(fx.settings.certs[0].key.clone()),
            ..fx.settings.clone()
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("alpha.key: no CERTIFICATE"),
            "{error}"
        );
    }
}
