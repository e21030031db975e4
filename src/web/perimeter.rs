//! The perimeter (issue 16): who a request comes from, whether that
//! network may use this listener, and how fast one client address or one
//! token may go.
//!
//! * The client's address is the TCP peer's — or, when the peer is one of
//!   `[server] trusted_proxies`, the nearest address in `X-Forwarded-For`
//!   that is not itself a trusted proxy ([`client_address`]). Nothing else
//!   ever reads that header, so a client cannot name its own address.
//! * `[server] allow` limits the listener to client networks (403
//!   `network_refused`); a token's own `allow` list (`kci token create
//!   --allow`) limits where it works (checked in `auth`).
//! * `[server] rate_per_source` and `rate_per_token` cap requests (429
//!   `rate_limited` with `Retry-After`, counted in the `limited` metric).
//!   Each node keeps its own counts (GCRA, `governor`): with several nodes
//!   behind a balancer, a client gets up to the cap on each.

use super::{AppError, AppState};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use std::net::IpAddr;
use std::num::NonZeroU32;

/// The client's address, as the perimeter decided it (a request
/// extension every handler may read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The client behind `peer`: `peer` itself unless it is a trusted proxy;
/// then the rightmost address of `forwarded` (`X-Forwarded-For`, each
/// proxy appending the address it saw) that is not a trusted proxy — or
/// the leftmost, if all are. A malformed entry ends the walk there: what
/// lies left of it was written by someone no trusted proxy vouches for.
pub fn client_address(peer: IpAddr, forwarded: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded.unwrap_or_default().rsplit(',') {
        let Ok(addr) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = addr;
        if !is_trusted(&addr) {
            break;
        }
    }
    client
}

/// Whether `addr` is inside `allow` (an empty list allows every address).
pub fn allowed(addr: IpAddr, allow: &[IpNet]) -> bool {
    allow.is_empty() || allow.iter().any(|n| n.contains(&addr))
}

/// The request rates of one node.
pub struct RateLimits {
    per_source: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_token: Option<DefaultKeyedRateLimiter<String>>,
}

fn quota(cap: &crate::model::Cap) -> Option<Quota> {
    let count = NonZeroU32::new(cap.count)?;
    let period = cap.per.0.checked_div(cap.count)?;
    Quota::with_period(period).map(|q| q.allow_burst(count))
}

impl RateLimits {
    pub fn new(server: &crate::config::ServerConfig) -> RateLimits {
        RateLimits {
            per_source: server
                .rate_per_source
                .as_ref()
                .and_then(quota)
                .map(RateLimiter::keyed),
            per_token: server
                .rate_per_token
                .as_ref()
                .and_then(quota)
                .map(RateLimiter::keyed),
        }
    }

    /// `Err` with how long to wait when `token` is over its rate.
    pub fn token(&self, token: &str) -> Result<(), std::time::Duration> {
        check(self.per_token.as_ref(), &token.to_string())
    }

    fn source(&self, addr: &IpAddr) -> Result<(), std::time::Duration> {
        check(self.per_source.as_ref(), addr)
    }

    /// Forgets keys that have been idle long enough to be at full
    /// allowance again (bounds memory under many addresses).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.per_source {
            l.retain_recent();
        }
        if let Some(l) = &self.per_token {
            l.retain_recent();
        }
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: Option<&DefaultKeyedRateLimiter<K>>,
    key: &K,
) -> Result<(), std::time::Duration> {
    use governor::clock::{Clock, DefaultClock};
    match limiter.map(|l| l.check_key(key)) {
        None | Some(Ok(())) => Ok(()),
        Some(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
    }
}

/// The answer when a rate is exceeded.
pub fn too_many(by: &str, wait: std::time::Duration) -> AppError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    AppError::TooMany {
        code: "rate_limited",
        message: format!("too many requests from this {by}; try again in {secs} s"),
        retry_after: Some(std::time::Duration::from_secs(secs.max(1))),
    }
}

/// The perimeter's middleware: decides the client's address, refuses
/// networks the listener does not allow, and applies the per-address rate.
/// A listener's allowed client networks (empty: any).
pub type Networks = std::sync::Arc<[IpNet]>;

pub async fn perimeter(
    State((st, allow)): State<(AppState, Networks)>,
    mut req: Request,
    next: Next,
) -> Response {
    let server = &st.config.server;
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let Some(peer) = peer else {
        // No peer known (not served by `serve`): an allow-list fails
        // closed.
        if !allow.is_empty() {
            return AppError::NetworkRefused.into_response();
        }
        return next.run(req).await;
    };
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = client_address(peer, forwarded, &server.trusted_proxies);
    req.extensions_mut().insert(ClientAddr(client));
    if !allowed(client, &allow) {
        st.metrics.limit_hit("api", "network");
        return AppError::NetworkRefused.into_response();
    }
    if let Err(wait) = st.limits.source(&client) {
        st.metrics.limit_hit("api", "source");
        return too_many("address", wait).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_client_behind_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8", "::1/128"]);
        // (peer, X-Forwarded-For, client)
        for (peer, xff, want) in [
            // Not a proxy: its header is ignored, whatever it says.
            ("203.0.113.9", Some("10.1.1.1"), "203.0.113.9"),
            ("203.0.113.9", None, "203.0.113.9"),
            // One proxy.
            ("10.0.0.2", Some("198.51.100.7"), "198.51.100.7"),
            // The client wrote its own entry first: the proxy's entry wins.
            ("10.0.0.2", Some("1.2.3.4, 198.51.100.7"), "198.51.100.7"),
            // Two proxies in a row.
            ("10.0.0.2", Some("198.51.100.7, 10.0.0.3"), "198.51.100.7"),
            // A proxy that forwarded nothing.
            ("10.0.0.2", None, "10.0.0.2"),
            // Garbage at the right end: nothing further is believed.
            ("10.0.0.2", Some("198.51.100.7, not-an-address"), "10.0.0.2"),
            ("::1", Some("2001:db8::5"), "2001:db8::5"),
            // All proxies: the leftmost.
            ("10.0.0.2", Some("10.0.0.9, 10.0.0.3"), "10.0.0.9"),
        ] {
            assert_eq!(
                client_address(peer.parse().unwrap(), xff, &trusted),
                want.parse::<IpAddr>().unwrap(),
                "{peer} {xff:?}"
            );
        }
        // No trusted proxies: the peer, always.
        assert_eq!(
            client_address("10.0.0.2".parse().unwrap(), Some("1.2.3.4"), &[]),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn allow_lists() {
        let office = nets(&["192.0.2.0/24", "2001:db8::/32"]);
        // (address, list, allowed)
        for (addr, list, want) in [
            ("192.0.2.7", &office, true),
            ("192.0.3.7", &office, false),
            ("2001:db8::1", &office, true),
            ("198.51.100.1", &Vec::new(), true),
        ] {
            assert_eq!(allowed(addr.parse().unwrap(), list), want, "{addr}");
        }
    }

    #[test]
    fn rates_per_address_and_token() {
        let server: crate::config::ServerConfig =
            toml::from_str("rate_per_source = \"3/1h\"\nrate_per_token = \"2/1h\"\n").unwrap();
        let limits = RateLimits::new(&server);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.source(&a).is_ok());
        }
        let wait = limits.source(&a).unwrap_err();
        assert!(wait > std::time::Duration::from_secs(60), "{wait:?}");
        assert!(limits.source(&b).is_ok(), "each address its own");
        assert!(limits.token("t1").is_ok());
        assert!(limits.token("t1").is_ok());
        assert!(limits.token("t1").is_err());
        assert!(limits.token("t2").is_ok());
        let none = RateLimits::new(&toml::from_str("").unwrap());
        for _ in 0..100 {
            assert!(none.source(&a).is_ok() && none.token("t1").is_ok());
        }
        match too_many("token", std::time::Duration::from_millis(1500)) {
            AppError::TooMany {
                code, retry_after, ..
            } => assert_eq!(
                (code, retry_after),
                ("rate_limited", Some(std::time::Duration::from_secs(2)))
            ),
            other => panic!("{other:?}"),
        }
    }
}
