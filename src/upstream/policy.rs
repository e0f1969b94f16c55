//! Upstream endpoint policy: an admin-supplied endpoint must be https, on the allow-list, and
//! never a private, loopback, link-local or metadata address, so a company admin cannot make
//! SOPHIA call into a private network or the managed-identity endpoint.

use std::net::IpAddr;

use url::{Host, Url};

/// The hosts an admin may point an instance at, by default.
pub const DEFAULT_ALLOWED_HOSTS: &str = "*.openai.azure.com,*.cognitiveservices.azure.com,*.services.ai.azure.com,*.search.windows.net,*.blob.core.windows.net,*.applicationinsights.azure.com,dc.services.visualstudio.com";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("must be an absolute URL")]
    NotAUrl,
    #[error("must use https")]
    NotHttps,
    #[error("must not carry credentials, a query or a fragment")]
    ExtraParts,
    #[error("host '{0}' is not on the allowed upstream host list")]
    HostNotAllowed(String),
    #[error("address {0} is private, loopback, link-local or a metadata address")]
    ForbiddenAddress(IpAddr),
}

#[derive(Debug, Clone)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` matches any subdomain of example.com (not example.com itself).
    Suffix(String),
    Any,
}

/// Which upstream endpoints are acceptable.
#[derive(Debug, Clone)]
pub struct UpstreamPolicy {
    patterns: Vec<HostPattern>,
    allow_local: bool,
}

impl UpstreamPolicy {
    /// `allowed_hosts` is a comma-separated list of host names or `*.suffix` patterns (or `*`).
    pub fn new(allowed_hosts: &str, allow_local: bool) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for raw in allowed_hosts
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let raw = raw.to_ascii_lowercase();
            let pattern = if raw == "*" {
                HostPattern::Any
            } else if let Some(suffix) = raw.strip_prefix("*.") {
                if suffix.is_empty() || suffix.contains('*') {
                    return Err(format!("invalid host pattern '{raw}'"));
                }
                HostPattern::Suffix(format!(".{suffix}"))
            } else if raw.contains('*') {
                return Err(format!(
                    "invalid host pattern '{raw}' (only a leading '*.' is allowed)"
                ));
            } else {
                HostPattern::Exact(raw)
            };
            patterns.push(pattern);
        }
        if patterns.is_empty() {
            return Err("the allowed host list is empty".into());
        }
        Ok(Self {
            patterns,
            allow_local,
        })
    }

    pub fn allows_local(&self) -> bool {
        self.allow_local
    }

    /// Checks an endpoint as given by an admin and returns it normalised (no trailing slash).
    pub fn check(&self, raw: &str) -> Result<Url, EndpointError> {
        let url = Url::parse(raw.trim()).map_err(|_| EndpointError::NotAUrl)?;
        self.check_url(&url)?;
        Ok(url)
    }

    /// The checks of [`check`](Self::check) on an already parsed URL (no parse on the hot path).
    pub fn check_url(&self, url: &Url) -> Result<(), EndpointError> {
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(EndpointError::ExtraParts);
        }
        if !matches!(url.scheme(), "https" | "http") {
            return Err(EndpointError::NotHttps);
        }
        let host = url.host().ok_or(EndpointError::NotAUrl)?;
        let local = self.allow_local && is_local_dev_host(&host);
        match url.scheme() {
            "https" => {}
            "http" if local => {}
            _ => return Err(EndpointError::NotHttps),
        }
        if local {
            return Ok(());
        }
        match host {
            Host::Ipv4(ip) => return Err(EndpointError::ForbiddenAddress(IpAddr::V4(ip))),
            Host::Ipv6(ip) => return Err(EndpointError::ForbiddenAddress(IpAddr::V6(ip))),
            Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if !self.host_allowed(&name) {
                    return Err(EndpointError::HostNotAllowed(name));
                }
            }
        }
        Ok(())
    }

    /// Checks an address a name resolved to, at request time (DNS may point an allowed
    /// name at a private address).
    pub fn check_resolved(&self, ip: IpAddr) -> Result<(), EndpointError> {
        if self.allow_local && ip.is_loopback() {
            return Ok(());
        }
        if is_forbidden_ip(ip) {
            return Err(EndpointError::ForbiddenAddress(ip));
        }
        Ok(())
    }

    fn host_allowed(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| match p {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == name,
            HostPattern::Suffix(s) => name.ends_with(s.as_str()) && name.len() > s.len(),
        })
    }
}

fn is_local_dev_host(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Private, loopback, link-local, unspecified, multicast, CGNAT, documentation and metadata
/// ranges (169.254.169.254 and Azure's 168.63.129.16 included).
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o == [168, 63, 129, 16]
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(mapped) = v6.to_ipv4_mapped() {
                return is_forbidden_ip(IpAddr::V4(mapped));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(local: bool) -> UpstreamPolicy {
        UpstreamPolicy::new(DEFAULT_ALLOWED_HOSTS, local).unwrap()
    }

    #[test]
    fn accepts_azure_hosts_over_https() {
        let p = policy(false);
        assert!(p.check("https://acme.openai.azure.com").is_ok());
        assert!(p.check("https://acme.openai.azure.com/").is_ok());
        assert!(p.check("https://x.search.windows.net").is_ok());
        assert!(p.check("https://acct.blob.core.windows.net/docs").is_ok());
        assert!(p.check("https://ACME.OpenAI.Azure.com.").is_ok());
        assert!(
            p.check("https://westeurope-5.in.applicationinsights.azure.com/")
                .is_ok()
        );
        assert!(p.check("https://dc.services.visualstudio.com/").is_ok());
        assert!(
            p.check("https://evil.dc.services.visualstudio.com/")
                .is_err()
        );
    }

    #[test]
    fn rejects_everything_else() {
        let p = policy(false);
        assert_eq!(
            p.check("http://acme.openai.azure.com"),
            Err(EndpointError::NotHttps)
        );
        assert!(matches!(
            p.check("https://evil.com"),
            Err(EndpointError::HostNotAllowed(_))
        ));
        assert!(matches!(
            p.check("https://openai.azure.com"),
            Err(EndpointError::HostNotAllowed(_))
        ));
        assert!(matches!(
            p.check("https://acme.openai.azure.com.evil.com"),
            Err(EndpointError::HostNotAllowed(_))
        ));
        assert!(matches!(
            p.check("https://169.254.169.254"),
            Err(EndpointError::ForbiddenAddress(_))
        ));
        assert!(matches!(
            p.check("https://10.0.0.1"),
            Err(EndpointError::ForbiddenAddress(_))
        ));
        assert!(matches!(
            p.check("https://[::1]"),
            Err(EndpointError::ForbiddenAddress(_))
        ));
        assert!(matches!(
            p.check("https://127.0.0.1"),
            Err(EndpointError::ForbiddenAddress(_))
        ));
        assert_eq!(
            p.check("https://u:p@acme.openai.azure.com"),
            Err(EndpointError::ExtraParts)
        );
        assert_eq!(
            p.check("https://acme.openai.azure.com/?x=1"),
            Err(EndpointError::ExtraParts)
        );
        assert_eq!(p.check("file:///etc/passwd"), Err(EndpointError::NotHttps));
        assert_eq!(p.check("not a url"), Err(EndpointError::NotAUrl));
        assert_eq!(
            p.check("http://localhost:8080"),
            Err(EndpointError::NotHttps)
        );
    }

    #[test]
    fn local_development_allows_loopback_http_only() {
        let p = policy(true);
        assert!(p.check("http://127.0.0.1:9000").is_ok());
        assert!(p.check("http://localhost:9000").is_ok());
        assert_eq!(p.check("http://10.0.0.1"), Err(EndpointError::NotHttps));
        assert!(p.check("https://169.254.169.254").is_err());
    }

    #[test]
    fn resolved_addresses_are_checked() {
        let p = policy(false);
        for ip in [
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "168.63.129.16",
            "127.0.0.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "100.64.0.1",
        ] {
            assert!(p.check_resolved(ip.parse().unwrap()).is_err(), "{ip}");
        }
        assert!(p.check_resolved("20.1.2.3".parse().unwrap()).is_ok());
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(UpstreamPolicy::new("", false).is_err());
        assert!(UpstreamPolicy::new("a*.com", false).is_err());
        assert!(UpstreamPolicy::new("*.", false).is_err());
        assert!(
            UpstreamPolicy::new("*", false)
                .unwrap()
                .check("https://anything.example")
                .is_ok()
        );
    }
}
