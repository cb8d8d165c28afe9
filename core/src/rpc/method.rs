//! What every tunnel RPC method has: an interface ID, a method ID, and typed params and results.
//!
//! Each method is a marker type implementing [`Method`]; its params and results are plain
//! borrowed structs implementing [`Content`], used both to encode (fields supplied by the
//! caller) and to decode (fields borrowed from the received message).

use capnp::any_pointer;

use super::configuration::{UpdateConfiguration, UpdateConfigurationParams};
use super::frame::{DecodeError, EncodeError};
use super::registration::{
    RegisterConnection, RegisterConnectionParams, UnregisterConnection, UpdateLocalConfiguration,
    UpdateLocalConfigurationParams,
};
use super::session::{
    RegisterUdpSession, RegisterUdpSessionParams, UnregisterUdpSession, UnregisterUdpSessionParams,
};
use crate::schema::tunnelrpc_capnp::registration_server::unregister_connection_params;

/// A params or results struct: what a payload's `content` pointer holds.
pub trait Content<'a>: Sized {
    /// Reads the value from a received payload's content.
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError>;
    /// An upper bound on the words the value occupies once encoded.
    fn words(&self) -> usize;
    /// Writes the value into an outgoing payload's content.
    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError>;
}

/// One method of a tunnel RPC interface.
pub trait Method {
    /// ID of the interface that declares the method (what a `Call` carries).
    const INTERFACE_ID: u64;
    /// Ordinal of the method within that interface.
    const METHOD_ID: u16;
    /// The method's name in the schema.
    const NAME: &'static str;
    /// The method's parameters.
    type Params<'a>: Content<'a>;
    /// The method's results.
    type Results<'a>: Content<'a>;
}

/// Whether `(interface_id, method_id)` names method `M`.
pub fn is<M: Method>(interface_id: u64, method_id: u16) -> bool {
    interface_id == M::INTERFACE_ID && method_id == M::METHOD_ID
}

/// The params or results of a method that has none: an empty struct.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Empty;

impl Content<'_> for Empty {
    fn read(_: any_pointer::Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Empty)
    }

    fn words(&self) -> usize {
        0
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        // Any zero-sized struct type serves: the pointer says "struct, 0 data, 0 pointers".
        content.init_as::<unregister_connection_params::Builder<'_>>();
        Ok(())
    }
}

/// The params of a call to any method this crate knows, chosen by interface and method ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KnownParams<'a> {
    /// `RegistrationServer.registerConnection`.
    RegisterConnection(RegisterConnectionParams<'a>),
    /// `RegistrationServer.unregisterConnection`.
    UnregisterConnection,
    /// `RegistrationServer.updateLocalConfiguration`.
    UpdateLocalConfiguration(UpdateLocalConfigurationParams<'a>),
    /// `SessionManager.registerUdpSession`.
    RegisterUdpSession(RegisterUdpSessionParams<'a>),
    /// `SessionManager.unregisterUdpSession`.
    UnregisterUdpSession(UnregisterUdpSessionParams<'a>),
    /// `ConfigurationManager.updateConfiguration`.
    UpdateConfiguration(UpdateConfigurationParams<'a>),
}

impl<'a> KnownParams<'a> {
    /// Reads the params of method `(interface_id, method_id)`; `Ok(None)` if it is not known.
    pub fn read(
        interface_id: u64,
        method_id: u16,
        content: any_pointer::Reader<'a>,
    ) -> Result<Option<Self>, DecodeError> {
        let (i, m) = (interface_id, method_id);
        let params = if is::<RegisterConnection>(i, m) {
            KnownParams::RegisterConnection(Content::read(content)?)
        } else if is::<UnregisterConnection>(i, m) {
            KnownParams::UnregisterConnection
        } else if is::<UpdateLocalConfiguration>(i, m) {
            KnownParams::UpdateLocalConfiguration(Content::read(content)?)
        } else if is::<RegisterUdpSession>(i, m) {
            KnownParams::RegisterUdpSession(Content::read(content)?)
        } else if is::<UnregisterUdpSession>(i, m) {
            KnownParams::UnregisterUdpSession(Content::read(content)?)
        } else if is::<UpdateConfiguration>(i, m) {
            KnownParams::UpdateConfiguration(Content::read(content)?)
        } else {
            return Ok(None);
        };
        Ok(Some(params))
    }
}
