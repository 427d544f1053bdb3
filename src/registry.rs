//! Confluent Schema Registry REST client: register, look up, fetch by id.
//!
//! Only the public Confluent API is used, so Confluent, Karapace, Redpanda
//! and Apicurio (in its Confluent-compatible mode) all work. Registration
//! results are cached by (subject, exact schema text): walhouse generates
//! its schemas deterministically, so the text is the fingerprint, and a
//! changed table shape is a new text and a new registration. (Unlike
//! `schema_registry_converter`'s encoder, which keeps the first schema of a
//! subject and would silently drop new columns.)
//!
//! The Confluent wire format of a message is `0x00`, the schema id as a
//! big-endian u32, then the Avro binary body ([`wire_header`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::http::{request, BaseUrl, HttpError};
use crate::postgres::conninfo::Secret;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const ATTEMPTS: u32 = 5;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry: {0}")]
    Http(#[from] HttpError),
    #[error("the schema registry rejected the new schema of subject {subject} as incompatible: {message}")]
    Incompatible { subject: String, message: String },
    #[error("the schema registry refused the schema of subject {subject} as invalid: {message}")]
    Invalid { subject: String, message: String },
    #[error("the schema registry refused the credentials (HTTP {status}). Fix: check schema_registry_user / schema_registry_password")]
    Unauthorized { status: u16 },
    #[error("schema id {id} is unknown to the schema registry")]
    UnknownId { id: u32 },
    #[error("subject {subject} is unknown to the schema registry")]
    UnknownSubject { subject: String },
    #[error("the schema registry answered HTTP {status}: {body}{}", if *status == 404 { " (a 404 without Confluent's error code: is the URL's path that of the registry's API?)" } else { "" })]
    Status { status: u16, body: String },
    #[error("schema registry TLS: {0}")]
    Tls(String),
    #[error("the server at the schema registry URL answered GET /config without a compatibility level: it does not speak Confluent's schema registry API (is the URL's path right?)")]
    NotARegistry,
}

impl RegistryError {
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Http(e) => e.is_transient(),
            RegistryError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// An answer about one schema that gives no schema, from a registry
    /// that otherwise answers (a body that does not parse, a 4xx other than
    /// those about credentials, a 404 without Confluent's code): it costs
    /// the records of that schema, not the reader. The registry's API was
    /// checked at start (`GET /config`), so a wrong URL is not this.
    pub fn is_about_one_schema(&self) -> bool {
        match self {
            RegistryError::Status { status, .. } => *status < 500,
            RegistryError::UnknownId { .. } => true,
            _ => false,
        }
    }
}

/// How to reach the registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// CA bundle for https; default: the system bundle.
    pub ca: Option<PathBuf>,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    message: String,
}

/// A registered subject version.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub id: u32,
    pub schema: String,
}

pub struct Registry {
    url: BaseUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    authorization: Option<String>,
    registered: Mutex<HashMap<(String, String), u32>>,
    by_id: Mutex<HashMap<u32, Arc<String>>>,
    calls: std::sync::atomic::AtomicU64,
}

impl Registry {
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let url = BaseUrl::parse(&config.url)?;
        let tls = if url.tls {
            Some(tls_config(config.ca.as_deref())?)
        } else {
            None
        };
        let authorization = config.user.as_ref().map(|u| {
            let pw = config.password.as_ref().map(Secret::expose).unwrap_or("");
            format!("Basic {}", base64(format!("{u}:{pw}").as_bytes()))
        });
        Ok(Registry {
            url,
            tls,
            authorization,
            registered: Mutex::default(),
            by_id: Mutex::default(),
            calls: Default::default(),
        })
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), RegistryError> {
        let mut headers = vec![("Accept", CONTENT_TYPE.to_string())];
        if body.is_some() {
            headers.push(("Content-Type", CONTENT_TYPE.to_string()));
        }
        if let Some(a) = &self.authorization {
            headers.push(("Authorization", a.clone()));
        }
        let body = body.map(|b| b.to_string().into_bytes());
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let result = request(
                &self.url,
                self.tls.as_ref(),
                method,
                path,
                &headers,
                body.as_deref(),
                TIMEOUT,
            )
            .await;
            let outcome = match result {
                Ok(r) if r.status >= 500 => Err(RegistryError::Status {
                    status: r.status,
                    body: String::from_utf8_lossy(&r.body).into_owned(),
                }),
                Ok(r) if r.status == 401 || r.status == 403 => Err(RegistryError::Unauthorized { status: r.status }),
                Ok(r) => Ok((r.status, r.body)),
                Err(e) => Err(RegistryError::Http(e)),
            };
            match outcome {
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    let wait = Duration::from_millis(200 << attempt);
                    tracing::warn!(attempt, ?wait, "{e}; retrying");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Asks the registry for its global compatibility level: a wrong URL,
    /// a server that is not a schema registry, or refused credentials fail
    /// here, at start, rather than on the first record.
    pub async fn check(&self) -> Result<(), RegistryError> {
        let (status, answer) = self.call("GET", "/config", None).await?;
        let config: serde_json::Value = match status {
            200 => serde_json::from_slice(&answer).unwrap_or_default(),
            _ => return Err(status_error(status, &answer)),
        };
        if config
            .get("compatibilityLevel")
            .or(config.get("compatibility"))
            .is_none()
        {
            return Err(RegistryError::NotARegistry);
        }
        Ok(())
    }

    /// HTTP requests made so far (retries included).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registers `schema` under `subject` (or finds it registered) and
    /// returns its id. Same subject and text: answered from the cache.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let key = (subject.to_owned(), schema.to_owned());
        if let Some(id) = lock(&self.registered).get(&key) {
            return Ok(*id);
        }
        let body = serde_json::json!({ "schema": schema });
        let (status, answer) = self
            .call("POST", &format!("/subjects/{subject}/versions"), Some(&body))
            .await?;
        let id = match status {
            200 => parse::<IdAnswer>(status, &answer)?.id,
            409 => {
                return Err(RegistryError::Incompatible {
                    subject: subject.into(),
                    message: error_message(&answer),
                })
            }
            422 => {
                return Err(RegistryError::Invalid {
                    subject: subject.into(),
                    message: error_message(&answer),
                })
            }
            _ => return Err(status_error(status, &answer)),
        };
        lock(&self.registered).insert(key, id);
        lock(&self.by_id).insert(id, Arc::new(schema.to_owned()));
        Ok(id)
    }

    /// The schema text with id `id` (cached).
    pub async fn schema(&self, id: u32) -> Result<Arc<String>, RegistryError> {
        if let Some(s) = lock(&self.by_id).get(&id) {
            return Ok(s.clone());
        }
        let (status, answer) = self.call("GET", &format!("/schemas/ids/{id}"), None).await?;
        match status {
            200 => {
                let s = Arc::new(parse::<SchemaAnswer>(status, &answer)?.schema);
                lock(&self.by_id).insert(id, s.clone());
                Ok(s)
            }
            404 if error_code(&answer) == Some(40403) => Err(RegistryError::UnknownId { id }),
            _ => Err(status_error(status, &answer)),
        }
    }

    /// The latest version registered under `subject`.
    pub async fn latest(&self, subject: &str) -> Result<SubjectVersion, RegistryError> {
        let (status, answer) = self
            .call("GET", &format!("/subjects/{subject}/versions/latest"), None)
            .await?;
        match status {
            200 => parse(status, &answer),
            404 if error_code(&answer) == Some(40401) => Err(RegistryError::UnknownSubject {
                subject: subject.into(),
            }),
            _ => Err(status_error(status, &answer)),
        }
    }
}

/// Confluent wire format: magic byte 0 and the schema id.
pub fn wire_header(id: u32, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Splits a Confluent-framed message into schema id and Avro body.
pub fn split_wire(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [0, a, b, c, d, body @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        _ => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a cache that is still valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse<T: for<'de> Deserialize<'de>>(status: u16, body: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::Status {
        status,
        body: format!("unexpected answer ({e}): {}", String::from_utf8_lossy(body)),
    })
}

fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(e) if e.error_code != 0 => format!("{} (error {})", e.message, e.error_code),
        Ok(e) => e.message,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// Confluent's error code in an error answer. Only it tells "no such
/// schema" (40403) or "no such subject" (40401) from a 404 of a wrong URL.
fn error_code(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<ErrorAnswer>(body)
        .ok()
        .map(|e| e.error_code)
        .filter(|c| *c != 0)
}

fn status_error(status: u16, body: &[u8]) -> RegistryError {
    RegistryError::Status {
        status,
        body: error_message(body),
    }
}

fn tls_config(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, RegistryError> {
    use rustls::pki_types::pem::PemObject;
    let path = ca.unwrap_or(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| RegistryError::Tls(format!("{}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| RegistryError::Tls(format!("{}: {e}", path.display())))?;
        roots.add(cert).map_err(|e| RegistryError::Tls(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_about_one_schema_cost_only_its_records() {
        let status = |status, body: &str| RegistryError::Status {
            status,
            body: body.into(),
        };
        assert!(status(200, "unexpected answer").is_about_one_schema());
        assert!(status(404, "<html>").is_about_one_schema());
        assert!(status(422, "x").is_about_one_schema());
        assert!(!status(503, "x").is_about_one_schema());
        assert!(RegistryError::UnknownId { id: 7 }.is_about_one_schema());
        assert!(!RegistryError::Unauthorized { status: 401 }.is_about_one_schema());
        assert!(!RegistryError::NotARegistry.is_about_one_schema());
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("user:pa ss", "dXNlcjpwYSBzcw=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn wire_format_round_trips() {
        let mut out = Vec::new();
        wire_header(0x01020304, &mut out);
        out.extend_from_slice(b"body");
        assert_eq!(split_wire(&out), Some((0x01020304, &b"body"[..])));
        assert_eq!(split_wire(b"\x01abcdbody"), None);
        assert_eq!(split_wire(b"\x00ab"), None);
    }

    #[test]
    fn error_answers_keep_the_registry_message() {
        assert_eq!(
            error_message(br#"{"error_code":409,"message":"incompatible: field x"}"#),
            "incompatible: field x (error 409)"
        );
        assert_eq!(error_message(b"plain"), "plain");
    }
}
