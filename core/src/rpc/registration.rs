//! `RegistrationServer`: the interface the edge serves on the control stream.
//!
//! The connector bootstraps it and calls `registerConnection` (@0), then, for connection 0 of a
//! locally managed tunnel, `updateLocalConfiguration` (@2), and on graceful shutdown
//! `unregisterConnection` (@1).

use core::fmt;

use capnp::traits::HasTypeId;
use capnp::{any_pointer, text_list};

use super::frame::{
    check_len, data_words, malformed, read_array, read_data, read_text, text_words, write_data,
    write_text, DecodeError, EncodeError, MAX_LIST_LEN,
};
use super::method::{Content, Empty, Method};
use crate::schema::tunnelrpc_capnp::{
    client_info, connection_error, connection_response, registration_server, tunnel_auth,
};

/// Interface ID of `RegistrationServer` (`0xf71695ec7fe85497`).
pub const INTERFACE_ID: u64 = <registration_server::Client as HasTypeId>::TYPE_ID;

/// `registerConnection @0 (auth, tunnelId, connIndex, options) -> (result :ConnectionResponse)`.
#[derive(Debug, Clone, Copy)]
pub struct RegisterConnection;

impl Method for RegisterConnection {
    const INTERFACE_ID: u64 = INTERFACE_ID;
    const METHOD_ID: u16 = 0;
    const NAME: &'static str = "registerConnection";
    type Params<'a> = RegisterConnectionParams<'a>;
    type Results<'a> = ConnectionResponse<'a>;
}

/// `unregisterConnection @1 () -> ()`.
#[derive(Debug, Clone, Copy)]
pub struct UnregisterConnection;

impl Method for UnregisterConnection {
    const INTERFACE_ID: u64 = INTERFACE_ID;
    const METHOD_ID: u16 = 1;
    const NAME: &'static str = "unregisterConnection";
    type Params<'a> = Empty;
    type Results<'a> = Empty;
}

/// `updateLocalConfiguration @2 (config :Data) -> ()`.
#[derive(Debug, Clone, Copy)]
pub struct UpdateLocalConfiguration;

impl Method for UpdateLocalConfiguration {
    const INTERFACE_ID: u64 = INTERFACE_ID;
    const METHOD_ID: u16 = 2;
    const NAME: &'static str = "updateLocalConfiguration";
    type Params<'a> = UpdateLocalConfigurationParams<'a>;
    type Results<'a> = Empty;
}

/// The tunnel credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelAuth<'a> {
    /// Account tag (credentials `AccountTag`).
    pub account_tag: &'a str,
    /// Tunnel secret bytes.
    pub tunnel_secret: &'a [u8],
}

/// Who is connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo<'a> {
    /// Connector instance UUID, raw bytes.
    pub client_id: [u8; 16],
    /// Advertised features, e.g. `support_datagram_v3_2` (order is not significant).
    pub features: TextList<'a>,
    /// Build version, e.g. `2026.8.2`.
    pub version: &'a str,
    /// `GOOS_GOARCH`, e.g. `linux_amd64`.
    pub arch: &'a str,
}

/// Per-connection options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions<'a> {
    /// The connecting client.
    pub client: ClientInfo<'a>,
    /// An IP in 16-byte form (cloudflared sends the edge's address here on QUIC), or empty.
    pub origin_local_ip: &'a [u8],
    /// Replace an existing connection with the same index.
    pub replace_existing: bool,
    /// Unused compression setting (0).
    pub compression_quality: u8,
    /// Retries before this attempt.
    pub num_previous_attempts: u8,
}

/// Params of `registerConnection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterConnectionParams<'a> {
    /// Credentials.
    pub auth: TunnelAuth<'a>,
    /// Tunnel UUID, raw bytes.
    pub tunnel_id: [u8; 16],
    /// HA connection index.
    pub conn_index: u8,
    /// Options.
    pub options: ConnectionOptions<'a>,
}

impl<'a> Content<'a> for RegisterConnectionParams<'a> {
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError> {
        let p = content
            .get_as::<registration_server::register_connection_params::Reader<'a>>()
            .map_err(malformed("registerConnection params"))?;
        let auth = p.get_auth().map_err(malformed("registerConnection.auth"))?;
        let options = p
            .get_options()
            .map_err(malformed("registerConnection.options"))?;
        let client = options
            .get_client()
            .map_err(malformed("ConnectionOptions.client"))?;
        let features = client
            .get_features()
            .map_err(malformed("ClientInfo.features"))?;
        Ok(RegisterConnectionParams {
            auth: TunnelAuth {
                account_tag: read_text(auth.get_account_tag(), "TunnelAuth.accountTag")?,
                tunnel_secret: read_data(auth.get_tunnel_secret(), "TunnelAuth.tunnelSecret")?,
            },
            tunnel_id: read_array(p.get_tunnel_id(), "registerConnection.tunnelId")?,
            conn_index: p.get_conn_index(),
            options: ConnectionOptions {
                client: ClientInfo {
                    client_id: read_array(client.get_client_id(), "ClientInfo.clientId")?,
                    features: TextList::read(features)?,
                    version: read_text(client.get_version(), "ClientInfo.version")?,
                    arch: read_text(client.get_arch(), "ClientInfo.arch")?,
                },
                origin_local_ip: read_data(
                    options.get_origin_local_ip(),
                    "ConnectionOptions.originLocalIp",
                )?,
                replace_existing: options.get_replace_existing(),
                compression_quality: options.get_compression_quality(),
                num_previous_attempts: options.get_num_previous_attempts(),
            },
        })
    }

    fn words(&self) -> usize {
        let client = &self.options.client;
        // Structs: params 1+3, auth 0+2, options 1+2, client 0+4; two 16-byte ids.
        17 + text_words(self.auth.account_tag)
            + data_words(self.auth.tunnel_secret)
            + data_words(self.options.origin_local_ip)
            + client.features.words()
            + text_words(client.version)
            + text_words(client.arch)
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        let mut p =
            content.init_as::<registration_server::register_connection_params::Builder<'_>>();
        write_auth(&self.auth, p.reborrow().init_auth())?;
        p.set_tunnel_id(&self.tunnel_id);
        p.set_conn_index(self.conn_index);
        let o = &self.options;
        let mut options = p.init_options();
        write_client(&o.client, options.reborrow().init_client())?;
        write_data("ConnectionOptions.originLocalIp", o.origin_local_ip, |v| {
            options.set_origin_local_ip(v)
        })?;
        options.set_replace_existing(o.replace_existing);
        options.set_compression_quality(o.compression_quality);
        options.set_num_previous_attempts(o.num_previous_attempts);
        Ok(())
    }
}

fn write_auth(auth: &TunnelAuth<'_>, mut b: tunnel_auth::Builder<'_>) -> Result<(), EncodeError> {
    write_text("TunnelAuth.accountTag", auth.account_tag, |v| {
        b.set_account_tag(v)
    })?;
    write_data("TunnelAuth.tunnelSecret", auth.tunnel_secret, |v| {
        b.set_tunnel_secret(v)
    })
}

fn write_client(
    client: &ClientInfo<'_>,
    mut b: client_info::Builder<'_>,
) -> Result<(), EncodeError> {
    b.set_client_id(&client.client_id);
    client.features.write(|n| b.reborrow().init_features(n))?;
    write_text("ClientInfo.version", client.version, |v| b.set_version(v))?;
    write_text("ClientInfo.arch", client.arch, |v| b.set_arch(v))
}

/// Params of `updateLocalConfiguration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateLocalConfigurationParams<'a> {
    /// The local configuration as JSON, e.g. `{"ingress":[...]}`.
    pub config: &'a [u8],
}

impl<'a> Content<'a> for UpdateLocalConfigurationParams<'a> {
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError> {
        let p = content
            .get_as::<registration_server::update_local_configuration_params::Reader<'a>>()
            .map_err(malformed("updateLocalConfiguration params"))?;
        Ok(UpdateLocalConfigurationParams {
            config: read_data(p.get_config(), "updateLocalConfiguration.config")?,
        })
    }

    fn words(&self) -> usize {
        1 + data_words(self.config)
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        let mut p = content
            .init_as::<registration_server::update_local_configuration_params::Builder<'_>>();
        write_data("updateLocalConfiguration.config", self.config, |v| {
            p.set_config(v)
        })
    }
}

/// Result of `registerConnection`: refused or accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionResponse<'a> {
    /// The edge refused the registration.
    Error(ConnectionError<'a>),
    /// The edge accepted the registration.
    Details(ConnectionDetails<'a>),
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionError<'a> {
    /// Error text; `EDUPCONN` means a duplicate connection.
    pub cause: &'a str,
    /// Suggested delay before retrying, in nanoseconds (cloudflared ignores it).
    pub retry_after_ns: i64,
    /// Whether retrying may help.
    pub should_retry: bool,
}

/// What the edge says about an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionDetails<'a> {
    /// Connection UUID, raw bytes.
    pub uuid: [u8; 16],
    /// Edge location (airport code, e.g. `SJC`).
    pub location_name: &'a str,
    /// Whether the tunnel's configuration is managed remotely (then no local config is sent).
    pub tunnel_is_remotely_managed: bool,
}

impl<'a> Content<'a> for ConnectionResponse<'a> {
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError> {
        const WHAT: &str = "ConnectionResponse.result";
        let r = content
            .get_as::<registration_server::register_connection_results::Reader<'a>>()
            .map_err(malformed("registerConnection results"))?
            .get_result()
            .map_err(malformed("registerConnection.result"))?;
        match r.get_result().which() {
            Ok(connection_response::result::Error(e)) => {
                let e = e.map_err(malformed(WHAT))?;
                Ok(ConnectionResponse::Error(ConnectionError {
                    cause: read_text(e.get_cause(), "ConnectionError.cause")?,
                    retry_after_ns: e.get_retry_after(),
                    should_retry: e.get_should_retry(),
                }))
            }
            Ok(connection_response::result::ConnectionDetails(d)) => {
                let d = d.map_err(malformed(WHAT))?;
                Ok(ConnectionResponse::Details(ConnectionDetails {
                    uuid: read_array(d.get_uuid(), "ConnectionDetails.uuid")?,
                    location_name: read_text(
                        d.get_location_name(),
                        "ConnectionDetails.locationName",
                    )?,
                    tunnel_is_remotely_managed: d.get_tunnel_is_remotely_managed(),
                }))
            }
            Err(capnp::NotInSchema(value)) => {
                Err(DecodeError::UnknownVariant { what: WHAT, value })
            }
        }
    }

    fn words(&self) -> usize {
        // Results 0+1, response 1+1, error 2+1 or details 1+2 (+ 16-byte uuid).
        8 + match self {
            ConnectionResponse::Error(e) => text_words(e.cause),
            ConnectionResponse::Details(d) => 2 + text_words(d.location_name),
        }
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        let results =
            content.init_as::<registration_server::register_connection_results::Builder<'_>>();
        let r = results.init_result().init_result();
        match self {
            ConnectionResponse::Error(e) => write_error(e, r.init_error()),
            ConnectionResponse::Details(d) => {
                let mut b = r.init_connection_details();
                b.set_uuid(&d.uuid);
                b.set_tunnel_is_remotely_managed(d.tunnel_is_remotely_managed);
                write_text("ConnectionDetails.locationName", d.location_name, |v| {
                    b.set_location_name(v)
                })
            }
        }
    }
}

fn write_error(
    e: &ConnectionError<'_>,
    mut b: connection_error::Builder<'_>,
) -> Result<(), EncodeError> {
    b.set_retry_after(e.retry_after_ns);
    b.set_should_retry(e.should_retry);
    write_text("ConnectionError.cause", e.cause, |v| b.set_cause(v))
}

/// A list of texts: supplied by the caller for encoding, or read in place from a message.
#[derive(Clone, Copy)]
pub enum TextList<'a> {
    /// Texts to encode.
    Slice(&'a [&'a str]),
    /// Texts as received.
    Wire(text_list::Reader<'a>),
}

impl<'a> TextList<'a> {
    fn read(list: text_list::Reader<'a>) -> Result<Self, DecodeError> {
        let list = TextList::Wire(list);
        // Check every element now, so that iterating later yields no errors.
        list.iter().try_for_each(|t| t.map(drop))?;
        Ok(list)
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        match self {
            TextList::Slice(s) => s.len(),
            TextList::Wire(l) => l.len() as usize,
        }
    }

    /// Whether the list is empty (or null).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The texts in order; a received text that is not UTF-8 is an error.
    pub fn iter(&self) -> impl Iterator<Item = Result<&'a str, DecodeError>> + 'a {
        let list = *self;
        (0..self.len()).map_while(move |i| match list {
            TextList::Slice(s) => s.get(i).map(|s| Ok(*s)),
            TextList::Wire(l) => {
                let i = u32::try_from(i).ok()?;
                l.try_get(i).map(|t| read_text(t, "text list element"))
            }
        })
    }

    fn words(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        self.iter().fold(self.len(), |words, t| {
            words.saturating_add(t.map_or(0, text_words))
        })
    }

    /// Writes the list through `init` (empty is a null pointer).
    fn write<'b>(
        &self,
        init: impl FnOnce(u32) -> text_list::Builder<'b>,
    ) -> Result<(), EncodeError> {
        if self.is_empty() {
            return Ok(());
        }
        check_len("text list", self.len(), MAX_LIST_LEN)?;
        let mut list = init(self.len() as u32);
        for (i, text) in (0..).zip(self.iter()) {
            // A list read by this crate was checked then; a hand-built `Wire` list may fail.
            let text = text.map_err(|source| EncodeError::Unreadable {
                what: "text list element",
                source: Box::new(source),
            })?;
            write_text("text list element", text, |v| list.set(i, v))?;
        }
        Ok(())
    }
}

impl<'a> From<&'a [&'a str]> for TextList<'a> {
    fn from(texts: &'a [&'a str]) -> Self {
        TextList::Slice(texts)
    }
}

impl PartialEq for TextList<'_> {
    fn eq(&self, other: &Self) -> bool {
        super::same_items(self.iter(), other.iter())
    }
}

impl Eq for TextList<'_> {}

impl fmt::Debug for TextList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for t in self.iter() {
            match t {
                Ok(t) => list.entry(&t),
                Err(e) => list.entry(&format_args!("<{e}>")),
            };
        }
        list.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_id_is_cloudflareds() {
        assert_eq!(INTERFACE_ID, 0xf71695ec7fe85497);
    }
}
