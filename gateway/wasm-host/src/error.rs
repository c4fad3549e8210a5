//! Errors of the runtime, split by when they happen: building the runtime ([`RuntimeError`]),
//! loading a plugin ([`LoadError`], at start/reload, never on the request path) and calling one
//! ([`PluginError`], which the gateway maps to its fail mode).

use std::fmt;
use std::path::PathBuf;

/// Building a [`crate::PolicyRuntime`] failed (engine settings or a key set).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("key set `{name}`: {reason}")]
    KeySet { name: String, reason: String },
    #[error("cache directory {}: {source}", path.display())]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a plugin could not be loaded. Displays as `plugin `ID` (FILE): REASON`.
#[derive(Debug)]
pub struct LoadError {
    pub plugin: String,
    pub file: PathBuf,
    pub kind: LoadErrorKind,
}

/// The reason part of a [`LoadError`].
#[derive(Debug, thiserror::Error)]
pub enum LoadErrorKind {
    #[error("cannot read the file: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error(
        "the component does not implement the weir:policy `policy` world: {0} (a plugin built \
         against an older contract, e.g. before `plugin-info` had `phases`, must be rebuilt)"
    )]
    NotAPolicy(String),
    #[error("import `{import}` is not granted: {hint}")]
    ImportNotGranted { import: String, hint: String },
    #[error("invalid plugin settings: {0}")]
    InvalidSpec(String),
    #[error("init rejected the config: {0}")]
    Init(String),
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The first instance hit a limit or trapped while starting or in `init`: a matter of the
    /// plugin's `limits` (or a bug in it), not of its `config`.
    #[error("the first instance failed ({0}; see the plugin's `limits`): {1}")]
    FirstInstance(PluginErrorKind, String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plugin `{}` ({}): {}",
            self.plugin,
            self.file.display(),
            self.kind
        )
    }
}

/// No `source`: the message already includes the reason, and error chains printed with `{:#}`
/// would repeat it.
impl std::error::Error for LoadError {}

/// Which way a plugin call failed; the gateway picks its fail mode and metrics from this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PluginErrorKind {
    /// The call ran past the plugin's CPU deadline.
    Deadline,
    /// The instance tried to grow memory past its cap.
    MemoryLimit,
    /// Any other guest trap (panic, unreachable, out-of-bounds...).
    Trap,
    /// Host-side failure: instantiation, pool exhaustion, `init` failing on a fresh instance.
    Internal,
}

impl PluginErrorKind {
    /// Stable lower-case name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginErrorKind::Deadline => "deadline",
            PluginErrorKind::MemoryLimit => "memory_limit",
            PluginErrorKind::Trap => "trap",
            PluginErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for PluginErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed plugin call. The instance that failed has been discarded.
#[derive(Clone, Debug, thiserror::Error)]
#[error("plugin `{plugin}` {phase}: {kind}: {message}")]
pub struct PluginError {
    pub plugin: String,
    pub phase: &'static str,
    pub kind: PluginErrorKind,
    pub message: String,
}
