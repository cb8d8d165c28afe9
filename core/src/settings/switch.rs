//! cloudflared's boolean switches as urfave/cli v2 (on Go's `flag` package) reads them: `--x`
//! alone is on; `--x=VALUE` takes `strconv.ParseBool`'s spellings (`--x VALUE` does not: VALUE
//! is the next argument); the environment variable takes the same spellings, and set but empty
//! it leaves the switch unset (and altsrc still skips the file's key). Given again, the last
//! one counts.
//!
//! What a switch given `=false` means depends on how cloudflared reads it: by value
//! (`c.Bool`, [`by_value`]) it is off, over an environment variable or the file's `true`; by
//! presence (`c.IsSet`: `--hello-world`, `--bastion`, `--socks5`, `--stdin-control`,
//! [`by_presence`]) it is on, whatever its value.

use clap::builder::{MapValueParser, PossibleValue, PossibleValuesParser, TypedValueParser};

/// A switch as given on the command line or through its environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// `--x`, or a value `strconv.ParseBool` reads as true.
    On,
    /// A value `strconv.ParseBool` reads as false.
    Off,
    /// The environment variable set but empty: off, not set, and the file is not read.
    Blank,
}

/// `strconv.ParseBool`'s spellings, and the empty value only an environment variable may
/// have (Go's `flag` refuses `--x=`; clap cannot tell the two apart, so burrow takes both).
const SPELLINGS: [(&str, Switch); 13] = [
    ("true", Switch::On),
    ("false", Switch::Off),
    ("1", Switch::On),
    ("t", Switch::On),
    ("T", Switch::On),
    ("TRUE", Switch::On),
    ("True", Switch::On),
    ("0", Switch::Off),
    ("f", Switch::Off),
    ("F", Switch::Off),
    ("FALSE", Switch::Off),
    ("False", Switch::Off),
    ("", Switch::Blank),
];

impl Switch {
    /// Go's `c.Bool(name)`.
    pub fn value(self) -> bool {
        self == Self::On
    }

    /// Go's `c.IsSet(name)`.
    pub fn is_set(self) -> bool {
        self != Self::Blank
    }

    /// The value as cloudflared prints it (`c.String(name)` when set).
    pub fn go_value(self) -> Option<&'static str> {
        match self {
            Self::On => Some("true"),
            Self::Off => Some("false"),
            Self::Blank => None,
        }
    }

    fn from_spelling(s: String) -> Self {
        SPELLINGS
            .iter()
            .find(|(spelling, _)| *spelling == s)
            .map_or(Self::Blank, |(_, switch)| *switch)
    }
}

impl clap::builder::ValueParserFactory for Switch {
    type Parser = MapValueParser<PossibleValuesParser, fn(String) -> Switch>;

    /// Only `true` and `false` are listed in errors and help; the other spellings are taken.
    fn value_parser() -> Self::Parser {
        let listed = |s: &str| matches!(s, "true" | "false");
        PossibleValuesParser::new(
            SPELLINGS
                .iter()
                .map(|(s, _)| PossibleValue::new(*s).hide(!listed(s))),
        )
        .map(Switch::from_spelling as fn(String) -> Switch)
    }
}

/// A switch cloudflared reads by value (`c.Bool`): given (flag or variable) it wins over the
/// file, which wins over off.
pub fn by_value(given: Option<Switch>, file: Option<bool>) -> bool {
    given.map_or(file.unwrap_or(false), Switch::value)
}

/// A switch cloudflared reads by presence (`c.IsSet`): on if given with any value (even
/// `=false`), else if the file says `true`.
pub fn by_presence(given: Option<Switch>, file: Option<bool>) -> bool {
    given.map_or(file == Some(true), Switch::is_set)
}

/// `arg` made a switch as [`Switch`] reads it (for the flag table; derived fields say the same
/// with attributes, which a test checks).
pub(super) fn arg(arg: clap::Arg) -> clap::Arg {
    let id = arg.get_id().clone();
    arg.value_parser(clap::value_parser!(Switch))
        .action(clap::ArgAction::Set)
        .num_args(0..=1)
        .require_equals(true)
        .default_missing_value("true")
        .overrides_with(id)
}
