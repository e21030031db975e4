//! MTA-STS (RFC 8461): a recipient domain publishes, over HTTPS, which of
//! its MX hosts take mail and that they must be reached over verified
//! TLS. kci honours it when it delivers to a domain's MX itself
//! (`smtp = "mx"`): in `enforce` mode mail goes only to a listed MX, over
//! TLS with the MX's certificate verified, whatever a local policy says;
//! `testing` only reports. A policy once fetched holds until its
//! `max_age`, so an attacker who blocks the DNS record or the policy file
//! later cannot switch it off.
//!
//! The rules (the record, the policy file, which MX a pattern admits) are
//! pure functions with table tests; [`Policies`] fetches and caches.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

/// A domain's policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// MX patterns: a host name, or `*.` and a domain (one label).
    pub mx: Vec<String>,
    pub max_age: Duration,
}

/// The longest `max_age` RFC 8461 allows (a year).
const MAX_AGE: u64 = 31_557_600;
/// The largest policy file read (RFC 8461 §3.3 suggests 64 KiB).
const MAX_POLICY: usize = 64 * 1024;

/// The `id` of an `_mta-sts` TXT record (`v=STSv1; id=…`), if it is one.
pub fn record_id(txt: &str) -> Option<String> {
    let mut tags = txt.split(';').map(str::trim).filter(|t| !t.is_empty());
    if tags.next()? != "v=STSv1" {
        return None;
    }
    let id = tags.find_map(|t| t.strip_prefix("id="))?.trim();
    let ok = (1..=32).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric());
    ok.then(|| id.to_string())
}

/// Parses a policy file (RFC 8461 §3.2).
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("not `key: value`: {line:?}"))?;
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("mode `{other}`")),
                })
            }
            "max_age" => {
                let secs: u64 = value.parse().map_err(|_| format!("max_age `{value}`"))?;
                max_age = Some(Duration::from_secs(secs.min(MAX_AGE)));
            }
            "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
            _ => {} // extensions are ignored
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no `version: STSv1`".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mode != Mode::None && mx.is_empty() {
        return Err("no mx".into());
    }
    Ok(Policy { mode, mx, max_age })
}

/// Whether MX `host` is admitted by `pattern` (RFC 8461 §4.1): equal, or
/// `*.d` and `host` is one label more than `d`.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => host == pattern,
    }
}

impl Policy {
    /// Whether `host` is one of the MX hosts the policy lists.
    pub fn admits(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

/// How long a looked-up record (or its absence) is believed.
const RECORD_TTL: Duration = Duration::from_secs(300);

#[derive(Clone)]
struct Cached {
    id: Option<String>,
    policy: Option<Policy>,
    /// The record is looked up again after this.
    checked_until: Instant,
    /// The policy holds until this, whatever DNS says meanwhile.
    valid_until: Instant,
}

/// Fetched policies, by domain.
pub struct Policies {
    cache: Mutex<HashMap<String, Cached>>,
    https_port: u16,
    roots: Vec<reqwest::Certificate>,
}

impl Policies {
    pub fn new(https_port: u16, roots: Vec<reqwest::Certificate>) -> Policies {
        Policies {
            cache: Mutex::new(HashMap::new()),
            https_port,
            roots,
        }
    }

    /// The policy of `domain`, if it publishes one: from the cache while
    /// its record is fresh, fetched again when the record's id changes; a
    /// lookup or fetch that fails keeps a policy still in its `max_age`.
    pub async fn get(&self, dns: &mail_auth::MessageAuthenticator, domain: &str) -> Option<Policy> {
        let now = Instant::now();
        let cached = self.lock().get(domain).cloned();
        if let Some(c) = &cached
            && now < c.checked_until
        {
            return c.policy.clone().filter(|_| now < c.valid_until);
        }
        let still_valid = cached
            .as_ref()
            .filter(|c| now < c.valid_until)
            .and_then(|c| c.policy.clone());
        let id = match dns.txt_raw_lookup(format!("_mta-sts.{domain}.")).await {
            Ok(txt) => record_id(&String::from_utf8_lossy(&txt)),
            Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))) => None,
            // DNS trouble: keep what we had.
            Err(_) => return still_valid,
        };
        let Some(id) = id else {
            // No record: a policy still in its max_age holds (RFC 8461
            // §5.1); otherwise there is none.
            self.store(
                domain,
                cached.and_then(|c| c.id),
                still_valid.clone(),
                now,
                now,
            );
            return still_valid;
        };
        if let Some(c) = &cached
            && c.id.as_deref() == Some(id.as_str())
            && still_valid.is_some()
        {
            let valid = c.valid_until;
            self.store(domain, Some(id), still_valid.clone(), now, valid);
            return still_valid;
        }
        match self.fetch(dns, domain).await {
            Ok(policy) => {
                let valid = now + policy.max_age;
                self.store(domain, Some(id), Some(policy.clone()), now, valid);
                Some(policy)
            }
            Err(e) => {
                tracing::warn!(domain, error = %e, "MTA-STS policy not fetched");
                still_valid
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(
        &self,
        domain: &str,
        id: Option<String>,
        policy: Option<Policy>,
        now: Instant,
        valid_until: Instant,
    ) {
        let mut cache = self.lock();
        if cache.len() >= 10_000 {
            cache.retain(|_, c| c.valid_until > now);
        }
        cache.insert(
            domain.to_string(),
            Cached {
                id,
                policy,
                checked_until: now + RECORD_TTL,
                valid_until,
            },
        );
    }

    /// GETs `https://mta-sts.<domain>/.well-known/mta-sts.txt`: verified
    /// TLS, no redirects, a bounded body.
    async fn fetch(
        &self,
        dns: &mail_auth::MessageAuthenticator,
        domain: &str,
    ) -> Result<Policy, String> {
        let host = format!("mta-sts.{domain}");
        let ip: IpAddr = dns
            .resolver()
            .lookup_ip(format!("{host}."))
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .iter()
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        let mut client = reqwest::Client::builder()
            .resolve(&host, SocketAddr::new(ip, self.https_port))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .use_rustls_tls();
        for root in &self.roots {
            client = client.add_root_certificate(root.clone());
        }
        let client = client.build().map_err(|e| e.to_string())?;
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        let url = format!("https://{host}{port}/.well-known/mta-sts.txt");
        let mut resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(format!("{url}: HTTP {}", resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_POLICY {
                return Err(format!("{url}: larger than {MAX_POLICY} bytes"));
            }
        }
        parse_policy(&String::from_utf8_lossy(&body)).map_err(|e| format!("{url}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        for (txt, want) in [
            ("v=STSv1; id=20261202T0000", Some("20261202T0000")),
            ("v=STSv1;id=abc", Some("abc")),
            ("v=STSv1; id=abc; ext=1", Some("abc")),
            ("v=STSv2; id=abc", None),
            ("id=abc; v=STSv1", None),
            ("v=STSv1", None),
            ("v=STSv1; id=", None),
            ("v=STSv1; id=has space", None),
            ("v=spf1 -all", None),
        ] {
            assert_eq!(record_id(txt).as_deref(), want, "{txt}");
        }
    }

    #[test]
    fn policies() {
        let ok = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n";
        assert_eq!(
            parse_policy(ok).unwrap(),
            Policy {
                mode: Mode::Enforce,
                mx: vec!["mx1.example.com".into(), "*.example.net".into()],
                max_age: Duration::from_secs(604_800),
            }
        );
        let capped = parse_policy("version: STSv1\nmode: testing\nmx: a.b\nmax_age: 99999999999\n");
        assert_eq!(capped.unwrap().max_age, Duration::from_secs(MAX_AGE));
        assert_eq!(
            parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n")
                .unwrap()
                .mode,
            Mode::None
        );
        for bad in [
            "mode: enforce\nmx: a.b\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.b\n",
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: soon\n",
            "<html>not a policy</html>",
        ] {
            assert!(parse_policy(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mx_patterns() {
        for (pattern, host, want) in [
            ("mx.example.com", "mx.example.com", true),
            ("mx.example.com", "MX.Example.com.", true),
            ("mx.example.com", "mx2.example.com", false),
            ("*.example.com", "mx.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.example.com", ".example.com", false),
            ("*.example.com", "mx.example.com.evil.test", false),
        ] {
            assert_eq!(mx_matches(pattern, host), want, "{pattern} {host}");
        }
    }
}
