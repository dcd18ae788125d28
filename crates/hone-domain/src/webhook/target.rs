//! Where hone may send a webhook. A URL names a host a user chose, and the server sends
//! from inside its own network: a URL or a name resolving to loopback, a private range,
//! link-local (where clouds serve instance metadata and credentials) or another address
//! that is not the public internet would let any API key probe that network (SSRF).
//! So such addresses are refused unless the operator allows them, and plain `http`
//! needs the operator's consent too. This module checks what needs no network: the
//! URL's shape and an address; `hone-webhooks` resolves names and checks each address
//! here, at creation and again at every delivery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

use crate::ValidationError;

/// Longer URLs are refused (they are stored, listed and logged).
pub const MAX_URL_CHARS: usize = 2048;

/// What the operator allows (config `webhook_allow_http`,
/// `webhook_allow_private_targets`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    pub allow_http: bool,
    pub allow_private: bool,
}

/// An endpoint URL, checked for everything that needs no name resolution.
pub fn parse_endpoint_url(raw: &str, policy: TargetPolicy) -> Result<Url, ValidationError> {
    let bad = |m: String| ValidationError::new("url", m);
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(bad(format!(
            "url is longer than {MAX_URL_CHARS} characters"
        )));
    }
    let url = Url::parse(raw).map_err(|e| bad(format!("url is not an absolute URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" => {
            return Err(bad(
                "url must use https (this server does not send webhooks over plain http: \
                 webhook_allow_http = false)"
                    .into(),
            ))
        }
        other => return Err(bad(format!("url must be https, not {other}:"))),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "url must not hold credentials; authenticate deliveries by their signature".into(),
        ));
    }
    if url.fragment().is_some() {
        return Err(bad("url must not have a #fragment".into()));
    }
    let refused = |why: &str| {
        bad(format!(
            "url points at {why}; this server does not send webhooks into private networks \
             (webhook_allow_private_targets = false)"
        ))
    };
    match url.host() {
        None => return Err(bad("url has no host".into())),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !policy.allow_private && (name == "localhost" || name.ends_with(".localhost")) {
                return Err(refused("a loopback address (localhost)"));
            }
        }
        Some(Host::Ipv4(ip)) => {
            if let (false, Some(why)) = (policy.allow_private, forbidden_address(ip.into())) {
                return Err(refused(&format!("{ip}, {why}")));
            }
        }
        Some(Host::Ipv6(ip)) => {
            if let (false, Some(why)) = (policy.allow_private, forbidden_address(ip.into())) {
                return Err(refused(&format!("{ip}, {why}")));
            }
        }
    }
    Ok(url)
}

/// Why `ip` is not a public internet address a webhook may go to, if it is not.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        // RFC 1918, and RFC 6598's shared space (carrier NAT; Alibaba's metadata).
        "a private address"
    } else if ip.is_link_local() {
        "a link-local address (cloud instance metadata lives there)"
    } else if a == 0 || ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        "an address that is not unicast on the internet"
    } else if ip.is_documentation()
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b & 0xfe) == 18)
    {
        "a reserved address"
    } else {
        return None;
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Addresses that carry an IPv4 address are judged by it: IPv4-mapped
    // (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])));
    }
    if s[0] == 0x2002 {
        return forbidden_v4(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() || ip.is_multicast() || s[..6] == [0; 6] {
        // The rest of ::/96 is the deprecated IPv4-compatible form.
        "an address that is not unicast on the internet"
    } else if (s[0] & 0xfe00) == 0xfc00 {
        // Unique local (fc00::/7), IPv6's private ranges (and AWS's fd00:ec2::254).
        "a private address"
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "a link-local address (cloud instance metadata lives there)"
    } else if (s[0], s[1]) == (0x2001, 0x0db8) || (s[0], s[1]) == (0x2001, 0) {
        // Documentation, and Teredo (whose IPv4 address is obfuscated).
        "a reserved address"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy {
        allow_http: false,
        allow_private: false,
    };

    fn refused(raw: &str, policy: TargetPolicy) -> String {
        let e = parse_endpoint_url(raw, policy).expect_err(raw);
        assert_eq!(e.param, "url");
        e.message
    }

    #[test]
    fn public_https_urls_are_accepted() {
        for raw in [
            "https://example.com/hooks",
            "https://hooks.example.com:8443/a?b=c",
            "https://93.184.216.34/x",
            "https://[2606:2800:220:1:248:1893:25c8:1946]/",
        ] {
            parse_endpoint_url(raw, STRICT).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
        }
    }

    #[test]
    fn http_and_other_schemes_need_consent_or_are_refused() {
        assert!(refused("http://example.com/", STRICT).contains("webhook_allow_http"));
        let lax = TargetPolicy {
            allow_http: true,
            ..STRICT
        };
        assert!(parse_endpoint_url("http://example.com/", lax).is_ok());
        assert!(refused("ftp://example.com/", lax).contains("https"));
        assert!(refused("file:///etc/passwd", lax).contains("https"));
        assert!(refused("example.com/hooks", lax).contains("absolute"));
        assert!(refused("https://u:p@example.com/", lax).contains("credentials"));
        assert!(refused("https://example.com/#x", lax).contains("fragment"));
        assert!(refused(&format!("https://e.com/{}", "a".repeat(2100)), lax).contains("2048"));
    }

    #[test]
    fn private_targets_are_refused_unless_allowed() {
        for raw in [
            "https://127.0.0.1/",
            "https://localhost:8080/",
            "https://api.localhost/",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://100.100.100.200/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[fd00:ec2::254]/",
            "https://[fe80::1]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:c0a8:0101::1]/",
            // Decimal and hex spellings are normalised by the URL parser first.
            "https://2130706433/",
            "https://0x7f.1/",
        ] {
            assert!(
                refused(raw, STRICT).contains("webhook_allow_private_targets"),
                "{raw}"
            );
            let allowed = TargetPolicy {
                allow_private: true,
                ..STRICT
            };
            assert!(parse_endpoint_url(raw, allowed).is_ok(), "{raw}");
        }
    }

    #[test]
    fn addresses_are_classified() {
        let v = |s: &str| forbidden_address(s.parse().expect("ip"));
        assert_eq!(v("8.8.8.8"), None);
        assert_eq!(v("2606:4700::1111"), None);
        assert_eq!(v("100.63.255.255"), None);
        assert_eq!(v("100.64.0.1"), Some("a private address"));
        assert_eq!(v("172.32.0.1"), None);
        assert_eq!(v("127.8.8.8"), Some("a loopback address"));
        assert!(v("169.254.169.254").is_some_and(|w| w.contains("metadata")));
        assert!(v("224.0.0.1").is_some());
        assert!(v("255.255.255.255").is_some());
        assert!(v("198.18.0.1").is_some());
        assert!(v("::").is_some());
        assert!(v("ff02::1").is_some());
        assert!(v("2001:db8::1").is_some());
        assert_eq!(v("::ffff:8.8.8.8"), None);
        assert_eq!(v("64:ff9b::808:808"), None);
    }
}
