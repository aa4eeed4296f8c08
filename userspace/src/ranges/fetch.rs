//! Downloading a provider's document over HTTPS only (ureq on rustls, Mozilla's
//! roots from webpki-roots, or only the roots of a CA file given for a proxy or a
//! test), bounded in size and time. The caller checks and snapshots what comes back.

use std::{path::Path, sync::Arc, time::Duration};

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use super::RangesError;

/// The largest document accepted (Azure's service tags are the largest, some MiB).
pub const MAX_DOCUMENT: u64 = 64 << 20;
/// The whole exchange, connection to last byte.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// What came back.
pub struct Fetched {
    pub body: String,
    /// The response's ETag, a version stamp for documents that carry none.
    pub etag: Option<String>,
}

/// The certificates of a PEM file, to trust instead of the built-in roots.
pub fn load_ca(path: &Path) -> Result<Vec<Certificate<'static>>, RangesError> {
    let bad = |what: String| RangesError::Snapshot {
        path: path.display().to_string(),
        what,
    };
    let pem = std::fs::read(path).map_err(|source| RangesError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| bad(format!("not a PEM file: {e}")))? {
            PemItem::Certificate(cert) => certs.push(cert),
            _ => return Err(bad("holds something other than certificates".into())),
        }
    }
    if certs.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(certs)
}

/// GETs `url` (https only; redirects followed, to https only).
pub fn fetch(url: &str, ca: Option<Vec<Certificate<'static>>>) -> Result<Fetched, RangesError> {
    let err = |what: String| RangesError::Fetch {
        url: url.to_owned(),
        what,
    };
    if !url.starts_with("https://") {
        return Err(err("only https:// URLs are fetched".into()));
    }
    let mut tls = TlsConfig::builder();
    if let Some(certs) = ca {
        tls = tls.root_certs(RootCerts::Specific(Arc::new(certs)));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .https_only(true)
        .timeout_global(Some(TIMEOUT))
        .max_redirects(5)
        .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.build())
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| err(e.to_string()))?;
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_DOCUMENT)
        .read_to_string()
        .map_err(|e| err(e.to_string()))?;
    Ok(Fetched { body, etag })
}
