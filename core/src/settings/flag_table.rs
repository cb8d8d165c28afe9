//! cloudflared flags burrow takes only to name them (ignored or refused): clap reads them from a
//! table rather than from derived structs, whose generated code (one builder chain and one
//! extraction per field) weighed ~40 KB in burrow-mio's small-box binary. Each flag is built
//! with the methods the derive used, so parsing, environment variables and clap's messages
//! (`--label <LABEL>`, "cannot be used multiple times", suggestions) are unchanged.

use clap::{Arg, ArgAction, ArgMatches};

use super::switch::{self, Switch};

/// How a table flag takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Takes {
    /// None, or one after `=` (`--ui`, `--ui=false`): a [`Switch`] cloudflared reads by value.
    Switch,
    /// As `Switch`, but cloudflared reads it by presence (`c.IsSet`): `=false` is on too.
    Presence,
    /// One, once (`--label x`, `--label=x`).
    Value,
    /// One per use, repeatable (`--proxy-dns-upstream`).
    Values,
}

/// One flag: how it is spelled and read.
#[derive(Debug)]
pub(super) struct Flag {
    /// Its name, without the dashes.
    pub long: &'static str,
    /// clap's id, which clap also prints as the value's name (`--label <LABEL>`): the derive's
    /// SCREAMING_SNAKE spelling of the field, distinct from every derived id (snake_case).
    id: &'static str,
    /// How it takes a value.
    pub takes: Takes,
    /// Its environment variable, if cloudflared reads one.
    env: Option<&'static str>,
    /// A second variable cloudflared reads when the first is unset; clap reads one, so
    /// [`Flag::later_env`] is read by the caller.
    pub later_env: Option<&'static str>,
    /// cloudflared's other name for it.
    alias: Option<&'static str>,
}

impl Flag {
    /// A switch (`--ui`, `--ui=false`).
    pub const fn switch(long: &'static str, id: &'static str) -> Self {
        Self::new(long, id, Takes::Switch)
    }

    /// A switch cloudflared reads by presence.
    pub const fn presence(long: &'static str, id: &'static str) -> Self {
        Self::new(long, id, Takes::Presence)
    }

    /// A flag with one value.
    pub const fn value(long: &'static str, id: &'static str) -> Self {
        Self::new(long, id, Takes::Value)
    }

    /// A repeatable flag with a value.
    pub const fn values(long: &'static str, id: &'static str) -> Self {
        Self::new(long, id, Takes::Values)
    }

    const fn new(long: &'static str, id: &'static str, takes: Takes) -> Self {
        Self {
            long,
            id,
            takes,
            env: None,
            later_env: None,
            alias: None,
        }
    }

    /// Also read from `var`.
    pub const fn env(self, var: &'static str) -> Self {
        Self {
            env: Some(var),
            ..self
        }
    }

    /// Also read from `var` when neither the flag nor its first variable is given.
    pub const fn or_env(self, var: &'static str) -> Self {
        Self {
            later_env: Some(var),
            ..self
        }
    }

    /// Also spelled `--alias`.
    pub const fn alias(self, alias: &'static str) -> Self {
        Self {
            alias: Some(alias),
            ..self
        }
    }

    /// The flag as the derive built it: global to the subcommands, hidden from help.
    pub fn arg(&self) -> Arg {
        let arg = Arg::new(self.id)
            .value_name(self.id)
            .long(self.long)
            .global(true)
            .hide(true);
        let arg = match self.takes {
            Takes::Switch | Takes::Presence => switch::arg(arg),
            Takes::Value => arg.action(ArgAction::Set),
            Takes::Values => arg.action(ArgAction::Append),
        };
        let arg = match self.env {
            Some(var) => arg.env(var),
            None => arg,
        };
        match self.alias {
            Some(alias) => arg.alias(alias),
            None => arg,
        }
    }

    /// `None` if the flag was not given (on the command line or through its variable), else
    /// its value as Go prints it (of a repeated flag, the first; a switch's variable set but
    /// empty has none).
    pub fn read(&self, matches: &ArgMatches) -> Option<Option<String>> {
        match self.takes {
            Takes::Switch | Takes::Presence => self
                .switch_given(matches)
                .map(|s| s.go_value().map(str::to_owned)),
            Takes::Value | Takes::Values => matches
                .try_get_many::<String>(self.id)
                .ok()
                .flatten()
                .map(|mut values| values.next().cloned()),
        }
    }

    /// Whether the flag asks for what it names: a value flag given; a switch on as cloudflared
    /// reads it (by value, or by presence).
    pub fn is_on(&self, matches: &ArgMatches) -> bool {
        match self.takes {
            Takes::Switch => switch::by_value(self.switch_given(matches), None),
            Takes::Presence => switch::by_presence(self.switch_given(matches), None),
            Takes::Value | Takes::Values => self.read(matches).is_some(),
        }
    }

    fn switch_given(&self, matches: &ArgMatches) -> Option<Switch> {
        matches
            .try_get_one::<Switch>(self.id)
            .ok()
            .flatten()
            .copied()
    }
}
