//! Delivery straight to a recipient domain's MX hosts (`smtp = "mx"`),
//! for operators without a relay, or for partner domains reached
//! directly: MX records by preference (the domain itself when it has
//! none), port 25, STARTTLS as the transport policy says — and the
//! domain's MTA-STS policy, which in `enforce` mode admits only its listed
//! MX hosts, over TLS with their certificates verified.

use super::config::{MxConfig, TlsPolicy};
use super::mta_sts::{Mode, Policies};
use super::smtp::{SmtpPool, SmtpTarget, TlsFiles, TlsMode};
use crate::channels::DeliveryError;
use lettre::address::Envelope;
use lettre::transport::smtp::response::Response;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// MX hosts tried for one mail, at most.
const MAX_HOSTS: usize = 5;

pub struct Direct {
    dns: mail_auth::MessageAuthenticator,
    policies: Policies,
    port: u16,
    hello: String,
    tls: TlsPolicy,
    timeout: Duration,
    files: TlsFiles,
    /// One pool per MX host, address and TLS mode.
    pools: Mutex<HashMap<(String, IpAddr, TlsMode), Arc<SmtpPool>>>,
}

impl Direct {
    pub fn new(
        cfg: &MxConfig,
        hello: &str,
        timeout: Duration,
        files: TlsFiles,
    ) -> Result<Direct, String> {
        let dns = resolver(&cfg.nameservers)?;
        let mut roots = Vec::new();
        if let Some(pem) = &files.roots {
            for der in super::smtp::certificates(pem)? {
                roots.push(reqwest::Certificate::from_der(&der).map_err(|e| e.to_string())?);
            }
        }
        Ok(Direct {
            dns,
            policies: Policies::new(cfg.https_port, roots),
            port: cfg.port,
            hello: cfg.helo.clone().unwrap_or_else(|| hello.to_string()),
            tls: cfg.tls,
            timeout,
            files,
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// Sends one mail to `domain`'s MX hosts, in order of preference, until
    /// one takes it or refuses it for good; `tls` is the domain's own
    /// policy, if it has one (MTA-STS `enforce` overrides it).
    pub async fn send(
        &self,
        domain: &str,
        tls: Option<TlsPolicy>,
        envelope: &Envelope,
        mail: &[u8],
    ) -> Result<Response, DeliveryError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let policy = self.policies.get(&self.dns, &domain).await;
        let mut hosts = self.mx_hosts(&domain).await?;
        let mut mode = match tls.unwrap_or(self.tls) {
            TlsPolicy::Required => TlsMode::Required,
            TlsPolicy::Opportunistic => TlsMode::Opportunistic,
            TlsPolicy::None => TlsMode::None,
        };
        match &policy {
            Some(p) if p.mode == Mode::Enforce => {
                let all = hosts.join(", ");
                hosts.retain(|h| p.admits(h));
                if hosts.is_empty() {
                    return Err(DeliveryError::Transient {
                        reason: "mta_sts",
                        detail: format!(
                            "none of {domain}'s MX hosts ({all}) is in its MTA-STS policy (mx: {}); not sent",
                            p.mx.join(", ")
                        ),
                        retry_after: None,
                    });
                }
                mode = TlsMode::Required;
            }
            Some(p) if p.mode == Mode::Testing => {
                for h in hosts.iter().filter(|h| !p.admits(h)) {
                    tracing::warn!(%domain, mx = %h, "MTA-STS (testing): MX not in the policy");
                }
            }
            _ => {}
        }
        let mut last = None;
        for host in hosts.iter().take(MAX_HOSTS) {
            let pool = match self.pool(host, mode).await {
                Ok(p) => p,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match pool.send(envelope, mail).await {
                Ok(r) => return Ok(r),
                // The MX answered for the domain: that answer stands.
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(DeliveryError::Transient {
            reason: "dns",
            detail: format!("no MX host of {domain} to try"),
            retry_after: None,
        }))
    }

    /// The domain's MX hosts by preference; the domain itself when it
    /// publishes none (RFC 5321 §5.1).
    async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, DeliveryError> {
        let none = None::<
            &mail_auth::common::cache::NoCache<Box<str>, mail_auth::RecordSet<mail_auth::MX>>,
        >;
        match self.dns.mx_lookup(format!("{domain}."), none).await {
            Ok(set) => {
                let hosts: Vec<String> = set
                    .rrset
                    .iter()
                    .flat_map(|mx| mx.exchanges.iter())
                    .map(|h| h.trim_end_matches('.').to_string())
                    .filter(|h| !h.is_empty())
                    .collect();
                if hosts.is_empty() {
                    // A null MX (RFC 7505): the domain takes no mail.
                    return Err(DeliveryError::Permanent {
                        reason: "no_mx",
                        detail: format!("{domain} accepts no mail (null MX)"),
                    });
                }
                Ok(hosts)
            }
            Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))) => {
                Ok(vec![domain.to_string()])
            }
            Err(e) => Err(DeliveryError::Transient {
                reason: "dns",
                detail: format!("MX of {domain}: {e}"),
                retry_after: None,
            }),
        }
    }

    async fn pool(&self, host: &str, mode: TlsMode) -> Result<Arc<SmtpPool>, DeliveryError> {
        let ip = self
            .dns
            .resolver()
            .lookup_ip(format!("{host}."))
            .await
            .ok()
            .and_then(|ips| ips.iter().next())
            .ok_or_else(|| DeliveryError::Transient {
                reason: "dns",
                detail: format!("MX host {host} has no address"),
                retry_after: None,
            })?;
        let key = (host.to_string(), ip, mode);
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.get(&key) {
            return Ok(p.clone());
        }
        let target = SmtpTarget::mx(host, ip, self.port, mode, &self.hello);
        let pool = SmtpPool::new(target, self.timeout, &self.files).map_err(|detail| {
            DeliveryError::Permanent {
                reason: "tls_config",
                detail,
            }
        })?;
        if pools.len() >= 1024 {
            pools.clear();
        }
        let pool = Arc::new(pool);
        pools.insert(key, pool.clone());
        Ok(pool)
    }
}

/// The system's resolver, or the name servers given (`ip:port`).
fn resolver(
    nameservers: &[std::net::SocketAddr],
) -> Result<mail_auth::MessageAuthenticator, String> {
    use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig};
    let (config, mut opts) = if nameservers.is_empty() {
        mail_auth::hickory_resolver::system_conf::read_system_conf().map_err(|e| e.to_string())?
    } else {
        let servers = nameservers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            Default::default(),
        )
    };
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    mail_auth::MessageAuthenticator::new(config, opts).map_err(|e| e.to_string())
}
