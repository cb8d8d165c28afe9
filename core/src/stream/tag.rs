//! Connector tags (cloudflared's `--tag KEY=VALUE` and the automatic `ID` = connector id): a
//! `Cf-Warp-Tag-<Name>: <Value>` header on every request proxied to an HTTP origin (PROTOCOL.md
//! C§5.6).

use std::sync::OnceLock;

use regex::Regex;
use thiserror::Error;
use uuid::Uuid;

/// Prefix of the header each tag becomes.
pub const HEADER_PREFIX: &str = "Cf-Warp-Tag-";

/// One tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// Its name, a header-name token.
    pub name: String,
    /// Its value, printable ASCII.
    pub value: String,
}

/// A `--tag` value cloudflared refuses (its text).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("Cannot parse tag value {0}")]
pub struct TagError(pub String);

impl Tag {
    /// Parses `KEY=VALUE` as cloudflared does: the key made of header-name characters, the
    /// value of printable ASCII (spaces included).
    pub fn parse(compound: &str) -> Result<Self, TagError> {
        static PATTERN: OnceLock<Regex> = OnceLock::new();
        let re = PATTERN.get_or_init(|| {
            Regex::new(r"^([a-zA-Z0-9!#$%&'*+\-.^_`|~]+)=([[:print:]]+)$").expect("valid")
        });
        let caps = re
            .captures(compound)
            .ok_or_else(|| TagError(compound.to_owned()))?;
        Ok(Self {
            name: caps[1].to_owned(),
            value: caps[2].to_owned(),
        })
    }

    /// The tags cloudflared sends: the user's, then `ID` = the connector id.
    pub fn with_connector_id(user: &[Tag], connector_id: Uuid) -> Vec<Tag> {
        let mut tags = user.to_vec();
        tags.push(Tag {
            name: "ID".into(),
            value: connector_id.to_string(),
        });
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_as_cloudflared_parses_them() {
        assert_eq!(
            Tag::parse("env=prod box 1"),
            Ok(Tag {
                name: "env".into(),
                value: "prod box 1".into()
            })
        );
        assert_eq!(Tag::parse("a=b=c").unwrap().value, "b=c");
        for bad in ["", "=v", "k=", "k v=1", "k=\u{7f}", "k=é", "k"] {
            assert_eq!(Tag::parse(bad), Err(TagError(bad.into())), "{bad:?}");
        }
        let all = Tag::with_connector_id(&[Tag::parse("x=1").unwrap()], Uuid::from_u128(1));
        assert_eq!(all[1].name, "ID");
        assert_eq!(all[1].value, "00000000-0000-0000-0000-000000000001");
    }
}
