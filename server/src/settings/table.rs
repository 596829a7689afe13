//! The `settings_table!` macro: one row per setting in, the four places a
//! setting used to be spelled out: the clap flag with its help, the
//! `CHATR_*` variable, the TOML key (serde), and the merge into [`Settings`].
//!
//! [`Settings`]: super::Settings

/// Generates [`ServeArgs`](super::ServeArgs) and its layer plumbing from the table in
/// `settings.rs`. A row is
///
/// ```text
/// /// Help text (also the rustdoc of the field).
/// key: Type => place.in.settings,
///     env "CHATR_KEY" parse parser_fn,
///     arg(extra clap attributes)
///     [, serde(extra serde attributes)];
/// ```
///
/// - `key` is the file key; clap derives the flag from it (`--api-listen` from
///   `api_listen`).
/// - `place.in.settings` is where the value lands in [`Settings`](super::Settings)
///   (an `Option` place takes the value as `Some`); its value in
///   `Settings::defaults()` is the default, shown in `--help` as `[default: …]`.
/// - `parser_fn: fn(&str) -> Result<Type, String>` reads the environment variable;
///   an empty variable counts as unset.
macro_rules! settings_table {
    ($(
        $(#[doc = $doc:literal])+
        $key:ident: $ty:ty => $($at:ident).+,
            env $env:literal parse $parse:expr,
            arg($($arg:tt)*)
            $(, serde($($serde:tt)*))?;
    )+) => {
        /// Flags of `serve`; also the shape of the TOML config file (every key optional).
        /// One layer of settings: whatever the command line, the environment or the
        /// file set.
        #[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ServeArgs {
            /// TOML config file (keys as below, with `_`).
            #[arg(long, value_name = "FILE")]
            #[serde(skip)]
            pub config: Option<std::path::PathBuf>,
            $(
                $(#[doc = $doc])+
                #[arg(
                    long,
                    help = help_for(&[$($doc),+], ShowDefault::show(&Settings::defaults()$(.$at)+)),
                    $($arg)*
                )]
                $(#[serde($($serde)*)])?
                pub $key: Option<$ty>,
            )+
        }

        impl ServeArgs {
            /// Every setting's file key and environment variable, in table order.
            pub const KEYS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($key), $env)),+];

            /// Reads every `CHATR_*` variable through `env` into a layer.
            pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
                Ok(Self {
                    config: env_value(env, "CHATR_CONFIG", parse_path)?,
                    $($key: env_value(env, $env, $parse)?,)+
                })
            }

            /// Setting by setting: `self` where set, else `lower`.
            #[must_use]
            pub fn or(self, lower: Self) -> Self {
                Self {
                    config: self.config.or(lower.config),
                    $($key: self.$key.or(lower.$key),)+
                }
            }

            /// Writes every setting this layer has into `settings`.
            // `.into()` is the identity for most places, `Some` for `Option` ones.
            #[allow(clippy::useless_conversion)]
            fn apply(self, settings: &mut Settings) {
                $(
                    if let Some(value) = self.$key {
                        settings$(.$at)+ = value.into();
                    }
                )+
            }
        }
    };
}

pub(super) use settings_table;
