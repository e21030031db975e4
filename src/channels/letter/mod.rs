//! Letters (`postal:account` destinations): the notice's long form set as
//! an A4 PDF for a window envelope ([`pdf`]), to the account's postal
//! address, handed to whoever prints and posts it. Two ways, one per hub:
//!
//! * `spool = "/dir"`: `<reference>.pdf` written atomically (a temporary
//!   file, then renamed; mode 0600), its sidecar `<reference>.json` (the
//!   address, the reference, the page count) written the same way just
//!   before, so a print room picking up `*.pdf` always finds both;
//! * `upload = "https://…"`: a `multipart/form-data` POST to a
//!   print-and-post service (the fields below), with `Authorization:
//!   Bearer <token>`; a 2xx answer is accepted, its JSON `id` the receipt;
//!   429, 408 and 5xx are retried, any other 4xx is final.
//!
//! Which notices become letters at all is `plan::letter`'s rule; a notice
//! that is not admitted and still reaches the channel is stopped by the
//! scheduler before it is set.

pub mod pdf;

use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::model::{ChannelKind, PostalAddress, Secret, Span};
use async_trait::async_trait;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[channels.letter]`: present means enabled; `spool` or `upload`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetterConfig {
    /// A directory the letters are written to, each as `<reference>.pdf`
    /// with `<reference>.json` beside it, for a print room to pick up.
    #[serde(default)]
    pub spool: Option<PathBuf>,
    /// A print-and-post service's upload endpoint: each letter is POSTed
    /// there as `multipart/form-data`.
    #[serde(default)]
    pub upload: Option<url::Url>,
    /// The bearer token the upload endpoint wants.
    #[serde(default)]
    pub token: Option<Secret<String>>,
    /// The letterhead's name (default: the name of `[email] from`).
    #[serde(default)]
    pub sender: Option<String>,
    /// The letterhead's address, at most three lines; also the return
    /// line above the window.
    #[serde(default)]
    pub sender_lines: Vec<String>,
    /// The sender's country (ISO 3166-1 alpha-2): letters to an address in
    /// it print no country line.
    #[serde(default)]
    pub country: Option<String>,
    /// Give up on one upload after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// The print service's rate limit, such as `1/s`.
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(30))
}

impl LetterConfig {
    /// What is wrong, as (key, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let refuse = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        match (&self.spool, &self.upload) {
            (Some(_), Some(_)) => {
                return refuse("upload", "set either `spool` or `upload`, not both");
            }
            (None, None) => {
                return refuse(
                    "spool",
                    "set `spool` (a directory for a print room) or `upload` (a print-and-post service)",
                );
            }
            _ => {}
        }
        if let Some(spool) = &self.spool
            && !spool.is_absolute()
        {
            return refuse("spool", "must be an absolute path");
        }
        if let Some(url) = &self.upload {
            let loopback = matches!(
                url.host(),
                Some(url::Host::Ipv4(ip)) if ip.is_loopback()
            ) || url.host_str() == Some("localhost")
                || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
            if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
                return refuse(
                    "upload",
                    "must be https://… (plain http:// only to this machine)",
                );
            }
            if !url.username().is_empty() || url.password().is_some() {
                return refuse("upload", "credentials belong in `token`, not in the URL");
            }
        } else if self.token.is_some() {
            return refuse("token", "only the upload endpoint takes a token");
        }
        if self.sender_lines.len() > pdf::MAX_SENDER_LINES {
            return refuse("sender_lines", "at most three lines");
        }
        let lines = self.sender.iter().chain(&self.sender_lines);
        if lines.into_iter().any(|l| {
            l.chars().count() > crate::model::postal::MAX_LINE || l.chars().any(char::is_control)
        }) {
            return refuse(
                "sender_lines",
                "each line at most 50 characters, without control characters",
            );
        }
        if let Some(c) = &self.country
            && !(c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return refuse("country", "an ISO 3166-1 alpha-2 code such as DE or GB");
        }
        Ok(())
    }
}

/// Where the letters go.
enum HandOff {
    Spool(PathBuf),
    Upload {
        client: reqwest::Client,
        url: url::Url,
        token: Option<Secret<String>>,
    },
}

pub struct LetterChannel {
    letterhead: pdf::Letterhead,
    hand_off: HandOff,
}

impl LetterChannel {
    /// `operator`: the letterhead's name when `sender` is not set.
    pub fn from_config(cfg: &LetterConfig, operator: &str) -> anyhow::Result<Self> {
        cfg.validate()
            .map_err(|(k, m)| anyhow::anyhow!("channels.letter.{k}: {m}"))?;
        let hand_off = match (&cfg.spool, &cfg.upload) {
            (Some(dir), _) => HandOff::Spool(dir.clone()),
            (None, Some(url)) => HandOff::Upload {
                client: super::http::client(cfg.timeout.0)?,
                url: url.clone(),
                token: cfg.token.clone(),
            },
            (None, None) => anyhow::bail!("channels.letter: set `spool` or `upload`"),
        };
        Ok(Self {
            letterhead: pdf::Letterhead {
                name: cfg.sender.clone().unwrap_or_else(|| operator.to_string()),
                lines: cfg.sender_lines.clone(),
                country: cfg.country.clone(),
            },
            hand_off,
        })
    }
}

/// What a print room reads beside each PDF.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Sidecar {
    pub reference: String,
    pub pages: usize,
    pub address: PostalAddress,
    /// The lines as printed in the window.
    pub window: Vec<String>,
}

/// A print service's answer on success.
#[derive(Deserialize)]
struct Accepted {
    #[serde(default)]
    id: Option<serde_json::Value>,
}

fn permanent(reason: &'static str, detail: impl Into<String>) -> DeliveryError {
    DeliveryError::Permanent {
        reason,
        detail: detail.into(),
    }
}

/// The reference names files: the notification's id, nothing that could
/// leave the spool directory.
fn reference(msg: &Outgoing) -> Result<String, DeliveryError> {
    let id = &msg.notification.id;
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id.clone())
    } else {
        Err(permanent(
            "reference",
            "the notification id cannot name a file",
        ))
    }
}

/// The date printed: the day the letter is set, in the notice's zone.
fn today(msg: &Outgoing) -> String {
    let tz: chrono_tz::Tz = msg.notification.timezone.parse().unwrap_or(chrono_tz::UTC);
    chrono::Utc::now()
        .with_timezone(&tz)
        .format("%Y-%m-%d")
        .to_string()
}

/// Writes `bytes` to `dir/name` all at once: a temporary file (0600) in
/// the same directory, synced, then renamed over the name.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    // The rename itself durable.
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl Channel for LetterChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Letter
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let Some(to) = msg.postal_address.clone() else {
            return Err(permanent(
                "no_postal_address",
                "the account has no postal address",
            ));
        };
        let reference = reference(msg)?;
        let (from, date) = (self.letterhead.clone(), today(msg));
        let (subject, body) = (msg.rendered.subject.clone(), msg.rendered.body.clone());
        let (r, a) = (reference.clone(), to.clone());
        // Setting a letter is work for a thread, not for the runtime.
        let printed = tokio::task::spawn_blocking(move || {
            pdf::render(&pdf::Letter {
                from: &from,
                to: &a,
                date: &date,
                reference: &r,
                subject: &subject,
                body: &body,
            })
        })
        .await
        .map_err(|e| permanent("render", e.to_string()))?
        .map_err(|e| permanent("render", e.to_string()))?;
        match &self.hand_off {
            HandOff::Spool(dir) => {
                let sidecar = Sidecar {
                    reference: reference.clone(),
                    pages: printed.pages,
                    window: to.window_lines(self.letterhead.country.as_deref()),
                    address: to,
                };
                let json = serde_json::to_vec_pretty(&sidecar)
                    .map_err(|e| permanent("render", e.to_string()))?;
                let (dir, r) = (dir.clone(), reference.clone());
                tokio::task::spawn_blocking(move || {
                    write_atomically(&dir, &format!("{r}.json"), &json)?;
                    write_atomically(&dir, &format!("{r}.pdf"), &printed.pdf)
                })
                .await
                .map_err(|e| permanent("spool", e.to_string()))?
                // The directory full or gone: the operator can mend it.
                .map_err(|e| DeliveryError::Transient {
                    reason: "spool",
                    detail: format!("could not write to the spool directory: {e}"),
                    retry_after: None,
                })?;
                Ok(Receipt {
                    detail: Some(format!(
                        "letter {reference}.pdf spooled ({} pages)",
                        printed.pages
                    )),
                    ..Default::default()
                })
            }
            HandOff::Upload { client, url, token } => {
                let mut form = reqwest::multipart::Form::new()
                    .text("reference", reference.clone())
                    .text("pages", printed.pages.to_string())
                    .text("name", to.name.clone());
                for (i, line) in to.lines.iter().enumerate() {
                    form = form.text(format!("address_line_{}", i + 1), line.clone());
                }
                let file = reqwest::multipart::Part::bytes(printed.pdf)
                    .file_name(format!("{reference}.pdf"))
                    .mime_str("application/pdf")
                    .map_err(|e| permanent("render", e.without_url().to_string()))?;
                let form = form
                    .text("postcode", to.postcode.clone())
                    .text("town", to.town.clone())
                    .text("country", to.country.clone())
                    .part("file", file);
                let mut req = client.post(url.clone()).multipart(form);
                if let Some(t) = token {
                    req = req.bearer_auth(t.expose());
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| super::http::unanswered(&e.without_url()))?;
                let (_, text) = super::http::answer(resp).await?;
                let id = serde_json::from_str::<Accepted>(&text)
                    .ok()
                    .and_then(|a| a.id)
                    .map(|id| match id {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .map(|id| crate::model::excerpt(&id, 128));
                Ok(Receipt {
                    detail: Some(match &id {
                        Some(id) => format!("letter {id} ({} pages)", printed.pages),
                        None => format!("letter accepted ({} pages)", printed.pages),
                    }),
                    provider_ref: id,
                    ..Default::default()
                })
            }
        }
    }

    /// The spool directory is there and writable, or the print service
    /// answers at all.
    async fn healthcheck(&self) -> Result<(), String> {
        match &self.hand_off {
            HandOff::Spool(dir) => {
                let meta = tokio::fs::metadata(dir)
                    .await
                    .map_err(|e| format!("spool directory {}: {e}", dir.display()))?;
                if !meta.is_dir() || meta.permissions().readonly() {
                    return Err(format!(
                        "spool directory {} is not a writable directory",
                        dir.display()
                    ));
                }
                Ok(())
            }
            HandOff::Upload { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::testkit::{Provider, outgoing};

    const TOKEN: &str = "pp_live_7f3a9c1e5b2d4f60";

    fn upload(url: &str) -> LetterChannel {
        let cfg: LetterConfig = toml::from_str(&format!(
            "upload = \"{url}/v1/letters\"\ntoken = \"{TOKEN}\"\nsender_lines = [\"1 Fibre Street\", \"EC1A 1BB London\"]\ncountry = \"GB\""
        ))
        .unwrap();
        LetterChannel::from_config(&cfg, "Example ISP").unwrap()
    }

    fn letter() -> Outgoing {
        outgoing(
            "postal:account",
            "Your contract ends.",
            "Your contract ends on 31 March",
        )
    }

    /// One part of a `multipart/form-data` body: its name, file name,
    /// content type and content.
    type Part = (String, Option<String>, Option<String>, Vec<u8>);

    /// The parts of a `multipart/form-data` body, in order.
    fn parts(req: &crate::channels::testkit::Request) -> Vec<Part> {
        let ct = req.header("content-type").unwrap_or_default();
        let boundary = ct
            .strip_prefix("multipart/form-data; boundary=")
            .expect("a multipart/form-data body");
        let sep = format!("--{boundary}");
        let body = &req.body[..];
        let mut out = Vec::new();
        let mut rest = body;
        while let Some(at) = find(rest, sep.as_bytes()) {
            rest = &rest[at + sep.len()..];
            if rest.starts_with(b"--") {
                break;
            }
            let rest_part = rest.strip_prefix(b"\r\n").expect("CRLF after a boundary");
            let end = find(rest_part, sep.as_bytes()).expect("a closing boundary");
            let part = &rest_part[..end - 2]; // without the CRLF before it
            let head_end = find(part, b"\r\n\r\n").expect("part headers");
            let head = String::from_utf8_lossy(&part[..head_end]).to_string();
            let content = part[head_end + 4..].to_vec();
            let disposition = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
                .unwrap_or_default()
                .to_string();
            let attr = |k: &str| {
                disposition
                    .split(';')
                    .map(str::trim)
                    .find_map(|p| p.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
            };
            let kind = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Content-Type: ")
                        .or(l.strip_prefix("content-type: "))
                })
                .map(str::to_string);
            out.push((
                attr("name").unwrap_or_default(),
                attr("filename"),
                kind,
                content,
            ));
            rest = &rest_part[end..];
        }
        out
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[tokio::test]
    async fn uploads_the_pdf_and_the_address_as_multipart_with_the_token() {
        let service = Provider::start(201, r#"{"id":"ltr_8c41d2","status":"accepted"}"#).await;
        let receipt = upload(&service.url).deliver(&letter()).await.unwrap();
        assert_eq!(receipt.provider_ref.as_deref(), Some("ltr_8c41d2"));
        assert_eq!(
            receipt.detail.as_deref(),
            Some("letter ltr_8c41d2 (1 pages)")
        );
        let req = service.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/v1/letters")
        );
        assert_eq!(
            req.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        let got = parts(&req);
        let names: Vec<&str> = got.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "reference",
                "pages",
                "name",
                "address_line_1",
                "postcode",
                "town",
                "country",
                "file"
            ]
        );
        let text = |name: &str| {
            let p = got.iter().find(|p| p.0 == name).unwrap();
            assert_eq!(
                (p.1.as_deref(), p.2.as_deref()),
                (None, None),
                "{name} is a plain field"
            );
            String::from_utf8(p.3.clone()).unwrap()
        };
        assert_eq!(text("reference"), "01a20000-0000-7000-8000-000000000001");
        assert_eq!(text("pages"), "1");
        assert_eq!(text("name"), "Jörg Müller");
        assert_eq!(text("address_line_1"), "Hauptstraße 5");
        assert_eq!(
            (text("postcode"), text("town"), text("country")),
            ("10115".into(), "Berlin".into(), "DE".into())
        );
        let file = got.iter().find(|p| p.0 == "file").unwrap();
        assert_eq!(
            file.1.as_deref(),
            Some("01a20000-0000-7000-8000-000000000001.pdf")
        );
        assert_eq!(file.2.as_deref(), Some("application/pdf"));
        assert!(file.3.starts_with(b"%PDF-"));
    }

    #[tokio::test]
    async fn refusals_are_classified_and_never_show_the_token() {
        for (status, transient) in [
            (400, false),
            (401, false),
            (422, false),
            (429, true),
            (503, true),
        ] {
            let service = Provider::start(status, r#"{"error":"no"}"#).await;
            let err = upload(&service.url).deliver(&letter()).await.unwrap_err();
            assert_eq!(err.is_transient(), transient, "{status}");
            assert!(!format!("{err} {err:?}").contains(TOKEN));
        }
        // No address on the account: final, and nothing is sent.
        let service = Provider::start(201, "{}").await;
        let mut out = letter();
        out.postal_address = None;
        let err = upload(&service.url).deliver(&out).await.unwrap_err();
        assert_eq!(err.reason(), "no_postal_address");
        assert!(service.requests().is_empty());
    }

    #[tokio::test]
    async fn spools_the_pdf_and_its_sidecar_atomically_and_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg: LetterConfig = toml::from_str(&format!(
            "spool = \"{}\"\ncountry = \"DE\"",
            dir.path().display()
        ))
        .unwrap();
        let ch = LetterChannel::from_config(&cfg, "Example ISP").unwrap();
        ch.healthcheck().await.unwrap();
        let receipt = ch.deliver(&letter()).await.unwrap();
        let r = "01a20000-0000-7000-8000-000000000001";
        assert_eq!(
            receipt.detail.as_deref(),
            Some(format!("letter {r}.pdf spooled (1 pages)").as_str())
        );
        let pdf = std::fs::read(dir.path().join(format!("{r}.pdf"))).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        let sidecar: Sidecar =
            serde_json::from_slice(&std::fs::read(dir.path().join(format!("{r}.json"))).unwrap())
                .unwrap();
        assert_eq!(sidecar.reference, r);
        assert_eq!(sidecar.pages, 1);
        assert_eq!(sidecar.address.town, "Berlin");
        // A letter within the sender's country: no country line.
        assert_eq!(
            sidecar.window,
            ["Jörg Müller", "Hauptstraße 5", "10115 Berlin"]
        );
        for name in [format!("{r}.pdf"), format!("{r}.json")] {
            let mode = std::fs::metadata(dir.path().join(&name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // Nothing half-written is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A spool directory that is gone: worth retrying once mended.
        let gone: LetterConfig = toml::from_str("spool = \"/nonexistent/kci-spool\"").unwrap();
        let ch = LetterChannel::from_config(&gone, "Example ISP").unwrap();
        assert!(ch.healthcheck().await.is_err());
        let err = ch.deliver(&letter()).await.unwrap_err();
        assert!(err.is_transient() && err.reason() == "spool", "{err}");
    }

    #[test]
    fn config_mistakes_are_named() {
        let cases = [
            ("", "spool"),
            (
                "spool = \"/tmp/x\"\nupload = \"https://print.example/v1\"",
                "upload",
            ),
            ("spool = \"relative/dir\"", "spool"),
            ("upload = \"http://print.example/v1\"", "upload"),
            ("upload = \"https://u:p@print.example/v1\"", "upload"),
            ("spool = \"/tmp/x\"\ntoken = \"t\"", "token"),
            (
                "spool = \"/tmp/x\"\nsender_lines = [\"a\", \"b\", \"c\", \"d\"]",
                "sender_lines",
            ),
            ("spool = \"/tmp/x\"\ncountry = \"Germany\"", "country"),
        ];
        for (text, key) in cases {
            let cfg: LetterConfig = toml::from_str(text).unwrap();
            assert_eq!(
                cfg.validate().map_err(|e| e.0),
                Err(key.to_string()),
                "{text}"
            );
        }
        let ok: LetterConfig = toml::from_str("upload = \"http://127.0.0.1:9/v1\"").unwrap();
        ok.validate().unwrap();
    }
}
