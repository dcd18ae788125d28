//! Where a webhook may go, with the network: a URL's host is resolved and every address
//! it resolves to checked (`hone_domain::webhook::forbidden_address`), when an endpoint
//! is created or changed and again at every delivery. At delivery the check sits in the
//! HTTP client's resolver ([`CheckedResolver`]), so the addresses connected to are the
//! very ones checked: a name cannot resolve to a public address for the check and to
//! a private one for the connection (DNS rebinding).

use std::net::SocketAddr;
use std::time::Duration;

use hone_domain::webhook::{forbidden_address, parse_endpoint_url, TargetPolicy};
use hone_domain::ValidationError;
use url::{Host, Url};

/// How long a name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{host} does not resolve: {reason}")]
    Unresolved { host: String, reason: String },
    #[error(
        "{host} resolves to {addr}, {why}; this server does not send webhooks into private \
         networks (webhook_allow_private_targets = false)"
    )]
    Forbidden {
        host: String,
        addr: std::net::IpAddr,
        why: &'static str,
    },
}

/// The addresses of `host`, each of them allowed by `policy` (or the first reason one
/// is not: a name with any private address is refused as a whole).
pub async fn resolve_checked(
    host: &str,
    port: u16,
    policy: TargetPolicy,
) -> Result<Vec<SocketAddr>, TargetError> {
    let unresolved = |reason: String| TargetError::Unresolved {
        host: host.to_owned(),
        reason,
    };
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| unresolved(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
            .map_err(|e| unresolved(e.to_string()))?
            .collect();
    if addrs.is_empty() {
        return Err(unresolved("no addresses".into()));
    }
    if !policy.allow_private {
        for a in &addrs {
            if let Some(why) = forbidden_address(a.ip()) {
                return Err(TargetError::Forbidden {
                    host: host.to_owned(),
                    addr: a.ip(),
                    why,
                });
            }
        }
    }
    Ok(addrs)
}

/// An endpoint URL as the API accepts it: well formed (`parse_endpoint_url`), and its
/// host resolving to addresses `policy` allows. Errors name the field `url`.
pub async fn check_endpoint_url(raw: &str, policy: TargetPolicy) -> Result<Url, ValidationError> {
    let url = parse_endpoint_url(raw, policy)?;
    if let Some(Host::Domain(host)) = url.host() {
        let port = url.port_or_known_default().unwrap_or(443);
        resolve_checked(host, port, policy)
            .await
            .map_err(|e| ValidationError::new("url", format!("url: {e}")))?;
    }
    Ok(url)
}

/// The delivery client's resolver: names resolve only to addresses `policy` allows.
#[derive(Clone, Copy, Debug)]
pub struct CheckedResolver(pub TargetPolicy);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        Box::pin(async move {
            // The connector puts the URL's port on the addresses it gets.
            match resolve_checked(name.as_str(), 0, policy).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy {
        allow_http: true,
        allow_private: false,
    };

    #[tokio::test]
    async fn names_of_private_addresses_are_refused_unless_allowed() {
        // `localhost` is in /etc/hosts: no DNS server needed.
        let e = resolve_checked("localhost", 80, STRICT)
            .await
            .expect_err("loopback");
        assert!(
            e.to_string().contains("loopback") && e.to_string().contains("localhost"),
            "{e}"
        );
        let allowed = TargetPolicy {
            allow_private: true,
            ..STRICT
        };
        let addrs = resolve_checked("localhost", 80, allowed)
            .await
            .expect("allowed");
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80));
    }

    #[tokio::test]
    async fn urls_are_checked_with_their_field_named() {
        let e = check_endpoint_url("http://127.0.0.1:9/x", STRICT)
            .await
            .expect_err("literal loopback");
        assert_eq!(e.param, "url");
        let e = check_endpoint_url("http://no-such-host.invalid/x", STRICT)
            .await
            .expect_err("unresolvable");
        assert!(e.message.contains("does not resolve"), "{}", e.message);
    }
}
