//! Pool URLs as operators write them: `stratum+tcp://host:port` or `stratum+ssl://host:port`.

use std::fmt;
use std::str::FromStr;

/// Where an upstream pool listens and whether the connection is TLS.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pool url '{url}': {reason}")]
pub struct PoolUrlError {
    pub url: String,
    pub reason: String,
}

impl FromStr for PoolUrl {
    type Err = PoolUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PoolUrlError {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("stratum+tcp://") {
            (false, r)
        } else if let Some(r) = url
            .strip_prefix("stratum+ssl://")
            .or_else(|| url.strip_prefix("stratum+tls://"))
        {
            (true, r)
        } else {
            return Err(err(
                "must start with stratum+tcp:// or stratum+ssl:// (stratum+tls:// is accepted too)",
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| err("missing :port after the host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(err("the host is empty"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| err(&format!("port '{port}' is not a number from 1 to 65535")))?;
        if port == 0 {
            return Err(err("port 0 is not a port"));
        }
        Ok(PoolUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl fmt::Display for PoolUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls {
            "stratum+ssl"
        } else {
            "stratum+tcp"
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_ssl_and_ipv6() {
        let u: PoolUrl = "stratum+tcp://pool.example.com:3333".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls),
            ("pool.example.com", 3333, false)
        );
        let u: PoolUrl = "stratum+ssl://127.0.0.1:443/".parse().unwrap();
        assert!(u.tls);
        let u: PoolUrl = "stratum+tcp://[::1]:3333".parse().unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.to_string(), "stratum+tcp://[::1]:3333");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let e = "http://x:1".parse::<PoolUrl>().unwrap_err().to_string();
        assert!(e.contains("stratum+tcp://"), "{e}");
        let e = "stratum+tcp://host"
            .parse::<PoolUrl>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing :port"), "{e}");
        let e = "stratum+tcp://host:99999"
            .parse::<PoolUrl>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("99999"), "{e}");
    }
}
