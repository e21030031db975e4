//! Where a webhook may point: a public address, unless the operator allows
//! private ones (`[channels.webhook] allow_private`). A destination URI is
//! chosen by whoever holds `directory:write`, and kci posts to it before it
//! is verified and keeps what it answers; without this check it would be a
//! way into the hub's own network (a metadata service, an admin port on
//! loopback). Checked twice: when the destination is created (a clear
//! refusal), and at every connection through the channel's resolver (a
//! name that resolved to a public address then may point elsewhere now).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Which kind of address an IP is, as far as reaching it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// Routed on the Internet: a webhook may point here.
    Public,
    /// 127.0.0.0/8, ::1: this machine.
    Loopback,
    /// 0.0.0.0/8, ::: "this host" (connecting to it reaches loopback).
    Unspecified,
    /// 10/8, 172.16/12, 192.168/16, and IPv6 site-local fec0::/10.
    Private,
    /// 100.64/10, carrier-grade NAT (RFC 6598).
    Shared,
    /// 169.254/16 (cloud metadata services live here), fe80::/10.
    LinkLocal,
    /// fc00::/7.
    UniqueLocal,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// Everything else that is not routed publicly: 192.0.0/24, 198.18/15
    /// (benchmarking), 240/4, IPv6 outside 2000::/3, 2001::/23, NAT64 for
    /// local use (64:ff9b:1::/48).
    Reserved,
}

impl Range {
    /// The range in words, for a refusal.
    pub fn describe(self) -> &'static str {
        match self {
            Range::Public => "a public address",
            Range::Loopback => "a loopback address",
            Range::Unspecified => "the unspecified address",
            Range::Private => "a private address",
            Range::Shared => "a carrier-grade NAT address",
            Range::LinkLocal => "a link-local address",
            Range::UniqueLocal => "a unique-local address",
            Range::Multicast => "a multicast address",
            Range::Broadcast => "the broadcast address",
            Range::Documentation => "a documentation address",
            Range::Reserved => "a reserved address",
        }
    }
}

/// The range `ip` is in. IPv6 forms that carry an IPv4 address (mapped,
/// compatible, 6to4, NAT64) are judged by that address.
pub fn range(ip: IpAddr) -> Range {
    match ip {
        IpAddr::V4(v4) => range_v4(v4),
        IpAddr::V6(v6) => range_v6(v6),
    }
}

/// Whether a webhook may reach `ip` without `allow_private`.
pub fn is_public(ip: IpAddr) -> bool {
    range(ip) == Range::Public
}

fn range_v4(ip: Ipv4Addr) -> Range {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip.is_broadcast() => Range::Broadcast,
        (0, _, _) => Range::Unspecified,
        (127, _, _) => Range::Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => Range::Private,
        (100, 64..=127, _) => Range::Shared,
        (169, 254, _) => Range::LinkLocal,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Range::Documentation,
        (192, 0, 0) | (198, 18..=19, _) => Range::Reserved,
        (224..=239, _, _) => Range::Multicast,
        (240..=255, _, _) => Range::Reserved,
        _ => Range::Public,
    }
}

fn range_v6(ip: Ipv6Addr) -> Range {
    let s = ip.segments();
    let embedded = || {
        let [.., a, b, c, d] = ip.octets();
        Ipv4Addr::new(a, b, c, d)
    };
    if ip.is_unspecified() {
        return Range::Unspecified;
    }
    if ip.is_loopback() {
        return Range::Loopback;
    }
    match s {
        // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible, deprecated) and
        // 64:ff9b::a.b.c.d (NAT64): reaching them reaches the IPv4 address.
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => range_v4(embedded()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => range_v4(embedded()),
        // 6to4: 2002:AABB:CCDD::/48 carries a.b.c.d in segments 1 and 2.
        [0x2002, hi, lo, ..] => {
            let [a, b] = hi.to_be_bytes();
            let [c, d] = lo.to_be_bytes();
            range_v4(Ipv4Addr::new(a, b, c, d))
        }
        [0x2001, 0xdb8, ..] => Range::Documentation,
        [0x3fff, y, ..] if y < 0x1000 => Range::Documentation,
        // 2001::/23: IETF protocol assignments (Teredo among them).
        [0x2001, y, ..] if y < 0x200 => Range::Reserved,
        [x, ..] if x & 0xe000 == 0x2000 => Range::Public,
        [x, ..] if x & 0xfe00 == 0xfc00 => Range::UniqueLocal,
        [x, ..] if x & 0xffc0 == 0xfe80 => Range::LinkLocal,
        [x, ..] if x & 0xffc0 == 0xfec0 => Range::Private,
        [x, ..] if x & 0xff00 == 0xff00 => Range::Multicast,
        _ => Range::Reserved,
    }
}

/// What kci says when a webhook may not go to `ip`.
pub fn refusal(host: &str, ip: IpAddr) -> String {
    let what = range(ip).describe();
    if host.trim_matches(['[', ']']) == ip.to_string() {
        format!(
            "{ip} is {what}: webhooks go only to public addresses unless [channels.webhook] allow_private = true"
        )
    } else {
        format!(
            "`{host}` resolves to {ip}, {what}: webhooks go only to public addresses unless [channels.webhook] allow_private = true"
        )
    }
}

/// A name that is this machine whatever DNS says (RFC 6761): `localhost`
/// and anything under `.localhost`, with or without the final dot.
pub fn is_localhost(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Looks a host name up; the channel's resolver and the check at creation
/// go through this, so tests can stand in a DNS that answers what they
/// want (a name that rebinds to loopback, say).
pub trait Lookup: Send + Sync {
    fn lookup(
        &self,
        host: &str,
    ) -> futures_util::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver, through tokio.
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: &str,
    ) -> futures_util::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    }
}

/// A name that resolved to no public address while private ones are not
/// allowed: what the resolver fails with, found again in the error chain
/// so the delivery fails for good with these words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotPublic(pub String);

/// A reqwest resolver that hands over only public addresses: the one check
/// that holds at connection time, whatever the name resolved to before.
pub struct PublicOnly(pub Arc<dyn Lookup>);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let lookup = self.0.lookup(&host);
        Box::pin(async move {
            let all = lookup.await?;
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            match (public.is_empty(), all.first()) {
                (false, _) => Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs),
                (true, Some(first)) => Err(Box::new(NotPublic(refusal(&host, first.ip())))
                    as Box<dyn std::error::Error + Send + Sync>),
                (true, None) => Err(format!("`{host}` has no address").into()),
            }
        })
    }
}

/// Where the error chain of a failed request says the resolver refused
/// the name, its words.
pub fn not_public(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(n) = e.downcast_ref::<NotPublic>() {
            return Some(n.0.clone());
        }
        cause = e.source();
    }
    None
}

/// Why a webhook to `url` may not be created, if it may not: an address
/// literal or a name that is, or resolves to, a non-public address. A
/// name that does not resolve (now) is let through: delivery checks again
/// at every connection, so nothing is reached that this would refuse, and
/// a DNS outage does not block creating destinations.
pub async fn check(url: &url::Url, lookup: &dyn Lookup) -> Result<(), String> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => literal(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => literal(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => {
            if is_localhost(name) {
                return Err(format!(
                    "`{name}` is this machine: webhooks go only to public addresses unless [channels.webhook] allow_private = true"
                ));
            }
            let answer =
                tokio::time::timeout(std::time::Duration::from_secs(5), lookup.lookup(name)).await;
            match answer {
                Ok(Ok(addrs)) => match addrs.iter().find(|a| !is_public(a.ip())) {
                    Some(a) => Err(refusal(name, a.ip())),
                    None => Ok(()),
                },
                Ok(Err(e)) => {
                    tracing::info!(host = %name, error = %e, "a new webhook's host does not resolve now");
                    Ok(())
                }
                Err(_) => {
                    tracing::info!(host = %name, "a new webhook's host did not resolve in time");
                    Ok(())
                }
            }
        }
        None => Err("the address has no host".into()),
    }
}

/// Whether `url` names a non-public host on its face (an address literal
/// or `localhost`), without asking DNS: for advice, not for the check.
pub fn names_private(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => is_localhost(name),
        None => false,
    }
}

/// An address literal in a URL: it never goes through the resolver, so it
/// is checked here, at creation and before every request.
pub fn literal(ip: IpAddr) -> Result<(), String> {
    if is_public(ip) {
        Ok(())
    } else {
        Err(refusal(&ip.to_string(), ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_ranges() {
        use Range::*;
        let table: &[(&str, Range)] = &[
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("93.184.215.14", Public),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", Public),
            ("172.15.0.1", Public),
            ("192.168.1.1", Private),
            ("100.64.0.1", Shared),
            ("100.127.255.254", Shared),
            ("100.128.0.1", Public),
            ("169.254.169.254", LinkLocal),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("192.0.0.8", Reserved),
            ("198.18.0.1", Reserved),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.255", Broadcast),
            ("2606:4700:4700::1111", Public),
            ("2a00:1450:4001::200e", Public),
            ("::", Unspecified),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:8.8.8.8", Public),
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::8.8.8.8", Public),
            ("64:ff9b:1::1", Reserved),
            ("2002:7f00:1::1", Loopback),
            ("2002:0a00:0001::1", Private),
            ("2002:0808:0808::1", Public),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Private),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("3fff:1000::1", Public),
            ("2001::1", Reserved),
            ("2001:1ff::1", Reserved),
            ("2001:200::1", Public),
            ("100::1", Reserved),
            ("4000::1", Reserved),
        ];
        for (ip, want) in table {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(range(parsed), *want, "{ip}");
            assert_eq!(is_public(parsed), *want == Public, "{ip}");
        }
    }

    #[test]
    fn localhost_names() {
        for name in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "a.localhost",
            "x.y.localhost.",
        ] {
            assert!(is_localhost(name), "{name}");
        }
        for name in ["localhost.example.com", "notlocalhost", "example.com"] {
            assert!(!is_localhost(name), "{name}");
        }
    }

    #[test]
    fn refusals_name_the_setting() {
        let e = refusal("127.0.0.1", "127.0.0.1".parse().unwrap());
        assert!(e.contains("loopback") && e.contains("allow_private"), "{e}");
        let e = refusal("hooks.example", "10.0.0.1".parse().unwrap());
        assert!(e.contains("`hooks.example` resolves to 10.0.0.1"), "{e}");
    }
}
