//! What can go wrong when inspecting a binary. Every error means "do not
//! probe this process": the daemon leaves it exactly as it was.
use std::{io, path::PathBuf};

use super::buildinfo::GoVersion;

/// Why a file is not a Go binary we could probe. Not an error in the daemon's
/// eyes (most processes are not Go), but typed so a caller can say why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotGoReason {
    /// No ELF magic (a script, or too short).
    NotElf,
    /// ELF, but not 64-bit little-endian x86-64.
    NotX86_64,
    /// An x86-64 ELF with neither `.go.buildinfo` nor `.gopclntab`, nor (when
    /// its section headers are gone) the build info magic in its data segment.
    NoGoMarkers,
}

impl std::fmt::Display for NotGoReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotGoReason::NotElf => "not an ELF file",
            NotGoReason::NotX86_64 => "not a 64-bit little-endian x86-64 ELF",
            NotGoReason::NoGoMarkers => "no Go build info nor Go function table",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not a Go binary: {0}")]
    NotGo(NotGoReason),
    #[error("malformed ELF: {0}")]
    Elf(#[from] object::read::Error),
    #[error("file too short: {len} bytes at offset {offset:#x} cannot be read")]
    Truncated { offset: u64, len: u64 },
    #[error("Go binary without build info (Go older than 1.13, or damaged): version unknown")]
    NoBuildInfo,
    #[error("malformed Go build info: {0}")]
    BuildInfo(&'static str),
    #[error("Go binary without a function table (.gopclntab)")]
    NoPclntab,
    #[error("malformed Go function table: {0}")]
    Pclntab(&'static str),
    #[error("cannot probe: Go version {0:?} cannot be parsed")]
    UnparsedVersion(String),
    /// Go before 1.17 passes arguments on the stack; the probes read registers.
    #[error("cannot probe: {0} predates the register ABI (Go 1.17)")]
    NoRegisterAbi(GoVersion),
    /// No DWARF of Go types (none at all, or only cgo's C code's) and a Go
    /// major.minor the offset table does not list: offsets are not guessed.
    #[error(
        "cannot probe: go{}.{} not in the offset table and the binary has no DWARF",
        .0.major, .0.minor
    )]
    OffsetsUnknown(GoVersion),
    #[error("malformed DWARF: {0}")]
    Dwarf(#[from] gimli::Error),
    #[error("{symbol}: address {va:#x} is not in a loaded segment of the file")]
    NotMapped { symbol: &'static str, va: u64 },
    #[error("{symbol}: undecodable instruction at {va:#x}")]
    Disassembly { symbol: &'static str, va: u64 },
}
