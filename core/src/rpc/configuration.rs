//! `ConfigurationManager`: remote configuration pushed by the edge on an RPC stream.

use capnp::any_pointer;
use capnp::traits::HasTypeId;

use super::frame::{
    data_words, malformed, read_data, read_text, text_words, write_data, write_text, DecodeError,
    EncodeError,
};
use super::method::{Content, Method};
use crate::schema::tunnelrpc_capnp::configuration_manager;

/// Interface ID of `ConfigurationManager` (`0xb48edfbdaa25db04`).
pub const INTERFACE_ID: u64 = <configuration_manager::Client as HasTypeId>::TYPE_ID;

/// `updateConfiguration @0 (version, config) -> (result :UpdateConfigurationResponse)`.
#[derive(Debug, Clone, Copy)]
pub struct UpdateConfiguration;

impl Method for UpdateConfiguration {
    const INTERFACE_ID: u64 = INTERFACE_ID;
    const METHOD_ID: u16 = 0;
    const NAME: &'static str = "updateConfiguration";
    type Params<'a> = UpdateConfigurationParams<'a>;
    type Results<'a> = UpdateConfigurationResponse<'a>;
}

/// Params of `updateConfiguration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateConfigurationParams<'a> {
    /// Configuration version; applied only if newer than the current one (initially -1).
    pub version: i32,
    /// The configuration as JSON.
    pub config: &'a [u8],
}

impl<'a> Content<'a> for UpdateConfigurationParams<'a> {
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError> {
        let p = content
            .get_as::<configuration_manager::update_configuration_params::Reader<'a>>()
            .map_err(malformed("updateConfiguration params"))?;
        Ok(UpdateConfigurationParams {
            version: p.get_version(),
            config: read_data(p.get_config(), "updateConfiguration.config")?,
        })
    }

    fn words(&self) -> usize {
        // Struct 1+1.
        2 + data_words(self.config)
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        let mut p =
            content.init_as::<configuration_manager::update_configuration_params::Builder<'_>>();
        p.set_version(self.version);
        write_data("updateConfiguration.config", self.config, |v| {
            p.set_config(v)
        })
    }
}

/// Result of `updateConfiguration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateConfigurationResponse<'a> {
    /// The version in force after the call.
    pub latest_applied_version: i32,
    /// Why the update failed; empty on success (or when the version was not newer).
    pub err: &'a str,
}

impl<'a> Content<'a> for UpdateConfigurationResponse<'a> {
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError> {
        let r = content
            .get_as::<configuration_manager::update_configuration_results::Reader<'a>>()
            .map_err(malformed("updateConfiguration results"))?
            .get_result()
            .map_err(malformed("updateConfiguration.result"))?;
        Ok(UpdateConfigurationResponse {
            latest_applied_version: r.get_latest_applied_version(),
            err: read_text(r.get_err(), "UpdateConfigurationResponse.err")?,
        })
    }

    fn words(&self) -> usize {
        // Results 0+1, response 1+1.
        3 + text_words(self.err)
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        let results =
            content.init_as::<configuration_manager::update_configuration_results::Builder<'_>>();
        let mut r = results.init_result();
        r.set_latest_applied_version(self.latest_applied_version);
        write_text("UpdateConfigurationResponse.err", self.err, |v| {
            r.set_err(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_id_is_cloudflareds() {
        assert_eq!(INTERFACE_ID, 0xb48edfbdaa25db04);
    }
}
