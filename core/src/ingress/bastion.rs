//! cloudflared's bastion (jump host) service: the TCP destination of each WebSocket request
//! is the one its client names in `Cf-Access-Jump-Destination` (`cloudflared access
//! --destination`), as `carrier.ResolveBastionDest` reads it.

use thiserror::Error;

use super::Service;

/// The request header naming a bastion request's destination.
pub const JUMP_DESTINATION: &str = "Cf-Access-Jump-Destination";

/// Why a bastion request has no destination.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BastionError {
    /// No (or an empty) `Cf-Access-Jump-Destination`: cloudflared's text.
    #[error("Did not receive final destination from client. The --destination flag is likely not set on the client side")]
    NoDestination,
    /// A destination without `:port` (Go's dialer refuses it the same way).
    #[error("address {0}: missing port in address")]
    MissingPort(String),
    /// A destination whose port is not a number below 65536.
    #[error("address {0}: invalid port")]
    BadPort(String),
}

/// The TCP service a bastion request reaches: `host:port` from the header, with a URL's
/// scheme, user info and path dropped (`ssh://host:22/x` is `host:22`), as cloudflared does.
pub fn destination(header: &str) -> Result<Service, BastionError> {
    let header = header.trim();
    if header.is_empty() {
        return Err(BastionError::NoDestination);
    }
    let authority = match header.split_once("://") {
        Some((_, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let a = &rest[..end];
            a.rsplit_once('@').map_or(a, |(_, host)| host)
        }
        None => header.split('/').next().unwrap_or(""),
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| BastionError::MissingPort(authority.into()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| BastionError::MissingPort(authority.into()))?;
            (host, port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(BastionError::MissingPort(authority.into()))
            }
            Some(hp) => hp,
            None => return Err(BastionError::MissingPort(authority.into())),
        },
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| BastionError::BadPort(authority.into()))?;
    Ok(Service::Tcp {
        host: host.to_owned(),
        port: Some(port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tcp(host: &str, port: u16) -> Service {
        Service::Tcp {
            host: host.into(),
            port: Some(port),
        }
    }

    #[test]
    fn reads_the_destination_as_cloudflared() {
        assert_eq!(
            destination("db.internal:5432"),
            Ok(tcp("db.internal", 5432))
        );
        assert_eq!(
            destination("ssh://user@10.0.0.2:22/x?y"),
            Ok(tcp("10.0.0.2", 22))
        );
        assert_eq!(destination("10.0.0.2:22/path"), Ok(tcp("10.0.0.2", 22)));
        assert_eq!(destination("tcp://[::1]:7000"), Ok(tcp("::1", 7000)));
        assert_eq!(destination(""), Err(BastionError::NoDestination));
        assert!(matches!(
            destination("db.internal"),
            Err(BastionError::MissingPort(_))
        ));
        assert!(matches!(
            destination("::1"),
            Err(BastionError::MissingPort(_))
        ));
        assert!(matches!(
            destination("h:99999"),
            Err(BastionError::BadPort(_))
        ));
    }

    proptest! {
        /// Any host and port written as the client may write them come back as they were;
        /// any string at all gives a destination or an error, never a panic.
        #[test]
        fn round_trip(host in "[a-z0-9.-]{1,30}", port: u16, url: bool, path in "[a-z/?=]{0,10}") {
            let text = if url {
                format!("ssh://{host}:{port}/{path}")
            } else {
                format!("{host}:{port}")
            };
            prop_assert_eq!(destination(&text), Ok(tcp(&host, port)));
            let v6 = format!("tcp://[fe80::{port:x}]:{port}");
            prop_assert_eq!(destination(&v6), Ok(tcp(&format!("fe80::{port:x}"), port)));
        }

        #[test]
        fn any_text_is_answered(text in ".{0,64}") {
            let _ = destination(&text);
        }
    }
}
