//! Failed logins, counted in Redis so every clone sees the same count.
//!
//! A password guesser gets ten tries per account and fifty per client
//! address in a five-minute window (both configurable); the next try gets
//! `429 Too Many Requests` with `Retry-After`, before any hash is
//! computed, so guessing also stops costing the clone 19 MiB and a core.
//! The counters live in the shared store for the same reason sessions do:
//! behind a load balancer, a limit kept in one clone's memory is
//! multiplied by the number of clones.
//!
//! Only failures count, so a user who logs in correctly is never blocked
//! by their own success, and one client's failures on one account never
//! block a different account (unless they come from the same address and
//! pass the per-address limit).
//!
//! The client's address is the TCP peer, unless the peer is a trusted
//! proxy (the load balancer, which sends `X-Forwarded-For`): then it is
//! the last address in that header, the one the proxy itself added.
//! Earlier entries were written by the client and prove nothing.
//!
//! Production adds what this leaves out: a progressive delay instead of a
//! hard wall, a CAPTCHA, a notice to the account's owner, and limits on
//! signups too.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderMap;

use crate::error::ApiError;

/// An address or a CIDR block (`10.0.0.0/8`), for `TRUSTED_PROXIES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Whether `ip` lies in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may arrive as an IPv6-mapped address on a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpBlock {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length is 0 to {max}"))?
        };
        Ok(IpBlock { addr, prefix })
    }
}

/// The client's address: the peer, or the load balancer's last
/// `X-Forwarded-For` entry when the peer is a trusted proxy.
pub fn client_ip(peer: Option<SocketAddr>, headers: &HeaderMap, trusted: &[IpBlock]) -> IpAddr {
    let peer_ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
    if !trusted.iter().any(|b| b.contains(peer_ip)) {
        return peer_ip;
    }
    // Several headers are one list, in order; the last hop is the proxy's.
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer_ip)
}

/// The failed-login limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures per account within the window.
    pub per_account: u64,
    /// Failures per client address within the window.
    pub per_ip: u64,
    /// The counting window.
    pub window: Duration,
}

/// Failed-login counters in Redis: `{prefix}:loginfail:user:{name}` and
/// `{prefix}:loginfail:ip:{address}`, each expiring one window after its
/// first failure (a fixed window: simple, and enough to make guessing slow).
#[derive(Clone)]
pub struct LoginThrottle {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    limits: Limits,
}

fn unavailable(e: redis::RedisError) -> ApiError {
    ApiError::Unavailable {
        what: "the session store",
        cause: e.to_string(),
    }
}

impl LoginThrottle {
    /// Counters under `prefix` (a test's own, or the clone's).
    pub fn new(redis: redis::aio::ConnectionManager, prefix: &str, limits: Limits) -> Self {
        LoginThrottle {
            redis,
            prefix: prefix.to_owned(),
            limits,
        }
    }

    fn keys(&self, username: &str, ip: IpAddr) -> [String; 2] {
        [
            format!("{}:loginfail:user:{username}", self.prefix),
            format!("{}:loginfail:ip:{ip}", self.prefix),
        ]
    }

    /// Counts an attempt against the account and the address *before*
    /// the password is checked, and refuses it (429) if either is over its
    /// limit. Counting first is what makes the limit hold under a burst:
    /// checking first and counting after the hash would let 80 concurrent
    /// guesses all pass the check before the first failure is counted.
    pub async fn attempt(&self, username: &str, ip: IpAddr) -> Result<(), ApiError> {
        let window = self.limits.window.as_secs().max(1);
        let [user_key, ip_key] = self.keys(username, ip);
        let mut conn = self.redis.clone();
        let mut pipe = redis::pipe();
        for key in [&user_key, &ip_key] {
            // EXPIRE NX: the window starts at the first attempt and is not
            // pushed back by later ones.
            pipe.incr(key, 1u64)
                .cmd("EXPIRE")
                .arg(key)
                .arg(window)
                .arg("NX")
                .ignore()
                .ttl(key);
        }
        let (user_n, user_ttl, ip_n, ip_ttl): (u64, i64, u64, i64) =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        // A TTL of -1 or -2 (none, or just expired) means "at most a window".
        let wait = |ttl: i64| if ttl > 0 { ttl as u64 } else { window };
        let mut retry_after = 0;
        if user_n > self.limits.per_account {
            retry_after = retry_after.max(wait(user_ttl));
        }
        if ip_n > self.limits.per_ip {
            retry_after = retry_after.max(wait(ip_ttl));
        }
        if retry_after > 0 {
            return Err(ApiError::TooManyRequests {
                message: "too many failed logins: wait before trying again".into(),
                retry_after_secs: retry_after,
            });
        }
        Ok(())
    }

    /// The attempt was not a failure (a good password, or a store that did
    /// not answer): take it off both counts, and a good login clears the
    /// account's count entirely. (Not the address's: one success must not
    /// buy a guesser more tries on other accounts.)
    pub async fn not_a_failure(
        &self,
        username: &str,
        ip: IpAddr,
        logged_in: bool,
    ) -> Result<(), ApiError> {
        let [user_key, ip_key] = self.keys(username, ip);
        let mut conn = self.redis.clone();
        let mut pipe = redis::pipe();
        if logged_in {
            pipe.del(&user_key).ignore();
        } else {
            pipe.decr(&user_key, 1u64).ignore();
        }
        let () = pipe
            .decr(&ip_key, 1u64)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(s: &str) -> Vec<IpBlock> {
        s.split(',').map(|b| b.parse().unwrap()).collect()
    }

    #[test]
    fn blocks_parse_and_match() {
        let b = blocks("127.0.0.1,10.0.0.0/8,::1,fd00::/8");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(b.iter().any(|b| b.contains(ip("127.0.0.1"))));
        assert!(b.iter().any(|b| b.contains(ip("10.20.30.40"))));
        assert!(b.iter().any(|b| b.contains(ip("::ffff:10.1.1.1"))));
        assert!(b.iter().any(|b| b.contains(ip("fd12::3"))));
        assert!(!b.iter().any(|b| b.contains(ip("127.0.0.2"))));
        assert!(!b.iter().any(|b| b.contains(ip("11.0.0.1"))));
        assert!(
            "0.0.0.0/0"
                .parse::<IpBlock>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        for bad in ["", "x", "10.0.0.0/33", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<IpBlock>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let trusted = blocks("127.0.0.1");
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        let lb: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "9.9.9.9:5000".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_ip(Some(lb), &h, &trusted), ip("1.2.3.4"));
        assert_eq!(client_ip(Some(stranger), &h, &trusted), ip("9.9.9.9"));
        h.append("x-forwarded-for", "5.5.5.5".parse().unwrap());
        assert_eq!(client_ip(Some(lb), &h, &trusted), ip("5.5.5.5"));
        let mut garbage = HeaderMap::new();
        garbage.append("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(client_ip(Some(lb), &garbage, &trusted), ip("127.0.0.1"));
    }
}
