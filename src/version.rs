//! The build's version and git revision: `loadimpact_exporter_build_info`,
//! `--version`, the landing page and the spans' instrumentation scope.

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision stamped by `build.rs` (`unknown` outside a checkout).
pub const REVISION: &str = env!("LOADIMPACT_EXPORTER_REVISION");

/// What `--version` prints after the name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("LOADIMPACT_EXPORTER_REVISION"),
    ")"
);
