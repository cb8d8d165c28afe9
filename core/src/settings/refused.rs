//! cloudflared `tunnel` flags burrow cannot honour. clap takes them (hidden) so that they stop
//! `tunnel run` with the reason, rather than with clap's bare "unexpected argument".

use clap::{ArgMatches, Command};

use super::flag_table::Flag;

/// A cloudflared flag burrow does not support, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} is a cloudflared flag burrow does not support: {why}")]
pub struct RefusedFlag {
    /// The flag, without its dashes.
    pub flag: &'static str,
    /// Why burrow refuses it.
    pub why: &'static str,
}

const PROVISIONING: &str = "burrow creates no tunnels, DNS records or load balancers through \
Cloudflare's API; run an existing tunnel with its credentials file or token";

/// The refused flags, as cloudflared spells them (every one takes a value but
/// `stdin-control`), each with why burrow refuses it.
pub(super) const REFUSED: &[(Flag, &str)] = &[
    (Flag::value("hostname", "HOSTNAME"), PROVISIONING),
    (Flag::value("id", "ID"), PROVISIONING),
    (Flag::value("lb-pool", "LB_POOL"), PROVISIONING),
    (Flag::value("name", "NAME"), PROVISIONING),
    (Flag::value("api-key", "API_KEY"), PROVISIONING),
    (Flag::value("api-email", "API_EMAIL"), PROVISIONING),
    (Flag::value("api-ca-key", "API_CA_KEY"), PROVISIONING),
    (Flag::value("api-url", "API_URL"), PROVISIONING),
    (
        Flag::value("quick-service", "QUICK_SERVICE"),
        "quick tunnels (trycloudflare.com) are created through Cloudflare's API",
    ),
    (
        Flag::presence("stdin-control", "STDIN_CONTROL"),
        "it is cloudflared's test hook (reconnect commands read from stdin)",
    ),
];

/// The first refused flag given (on the command line or through its variable) asking for what
/// burrow cannot do, in `REFUSED`'s order: `--stdin-control=false` still does (cloudflared reads
/// it by presence).
#[derive(Debug, Clone, Default)]
pub struct RefusedArgs {
    given: Option<RefusedFlag>,
}

impl RefusedArgs {
    /// The first refused flag given, if any.
    pub fn given(&self) -> Option<RefusedFlag> {
        self.given
    }
}

impl clap::FromArgMatches for RefusedArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = REFUSED
            .iter()
            .find(|(flag, _)| flag.is_on(matches))
            .map(|(flag, why)| RefusedFlag {
                flag: flag.long,
                why,
            });
        Ok(Self { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for RefusedArgs {
    fn augment_args(cmd: Command) -> Command {
        REFUSED
            .iter()
            .fold(cmd, |cmd, (flag, _)| cmd.arg(flag.arg()))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
