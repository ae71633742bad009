//! One error type for the whole core; the bindings map each kind to a Python exception.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The file is not valid for its format: names the file (when known) and the field.
    Format { source: String, message: String },
    /// A component the core does not implement (e.g. a Metaspace pre-tokenizer).
    Unsupported(String),
    /// A special token appeared in text under `special="raise"`. `offset` counts chars.
    SpecialToken { token: String, offset: usize },
    /// Anything else the caller passed in that cannot be honoured (bad id, bad pattern, ...).
    Invalid(String),
    Io { path: String, message: String },
    /// An allocation the input asked for failed (Python's `MemoryError`).
    Memory(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn format(source: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format { source: source.into(), message: message.into() }
    }

    /// `vec` with room for `n` more items, or a memory error naming `what` (allocation
    /// failures that inputs size: one long piece must not abort the process).
    pub fn reserve<T>(vec: &mut Vec<T>, n: usize, what: &str) -> Result<()> {
        vec.try_reserve_exact(n).map_err(|_| {
            Error::Memory(format!("{what}: {n} items of {} bytes", std::mem::size_of::<T>()))
        })
    }

    /// Whether `need` bytes can be had now (reserved in one block and freed at once), else an
    /// `Error::Memory` saying what needed them. Small needs pass unchecked.
    pub fn check_memory(need: usize, what: impl Fn() -> String) -> Result<()> {
        if need < 1 << 24 {
            return Ok(());
        }
        let mut probe: Vec<u8> = Vec::new();
        probe
            .try_reserve_exact(need)
            .map_err(|_| Error::Memory(format!("{} needs about {} MB of working memory", what(), need >> 20)))
    }

    /// Re-label a format error with the file it came from.
    pub fn in_file(self, path: &str) -> Self {
        match self {
            Error::Format { source, message } if source.is_empty() => {
                Error::Format { source: path.to_string(), message }
            }
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Format { source, message } if source.is_empty() => write!(f, "{message}"),
            Error::Format { source, message } => write!(f, "{source}: {message}"),
            Error::Unsupported(what) => write!(f, "unsupported tokenizer component: {what}"),
            Error::SpecialToken { token, offset } => write!(
                f,
                "special token {token:?} found in text at character offset {offset}; \
                 pass special=\"text\" to encode it as plain text, or allow it explicitly"
            ),
            Error::Invalid(message) => write!(f, "{message}"),
            Error::Io { path, message } => write!(f, "{path}: {message}"),
            Error::Memory(what) => write!(f, "out of memory: {what}"),
        }
    }
}

impl std::error::Error for Error {}
