//! Inspection of Go binaries, so that the daemon can place uprobes on them
//! (Go propagation: the lane of a request a handler goroutine read follows
//! the requests that goroutine, and the goroutines it starts, send).
//!
//! [`inspect`] answers, from the file alone: is it a Go x86-64 binary
//! (`elf`), which Go version ([`buildinfo`]), where the probed functions
//! start and return in the file ([`pclntab`], [`probes`], `disasm`: a real
//! decoder), and the struct field offsets the probes read through
//! ([`offsets`]: the binary's DWARF (`dwarf`), else a table keyed by Go
//! version). Any doubt is an [`InspectError`], and the process is then left
//! alone. Pure userspace; nothing here touches a running process.
pub mod buildinfo;
mod disasm;
mod dwarf;
mod elf;
pub mod error;
pub mod offsets;
pub mod pclntab;
pub mod probes;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod version_tests {
    use super::parse_major_minor;

    #[test]
    fn grpc_agent_versions() {
        type Case = (&'static [u8], Option<(u32, u32)>);
        let cases: [Case; 6] = [
            (b"1.33.3", Some((1, 33))),
            (b"1.60.0-dev xyz", Some((1, 60))),
            (b"1.33", None),
            (b"x1.33.3", None),
            (b"1..3", None),
            (b"", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_major_minor(text),
                want,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

use std::{fs::File, path::Path};

use object::{ReadCache, ReadCacheOps};

pub use buildinfo::{BuildInfo, GoVersion};
pub use error::{InspectError, NotGoReason};
pub use offsets::{Field, OffsetSource, StructOffsets};
pub use probes::{ProbeSymbol, ProbeTarget};

use elf::Image;
use pclntab::Pclntab;

/// What tagger needs to probe one Go binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoBinary {
    pub version: GoVersion,
    pub build: BuildInfo,
    /// One per [`ProbeSymbol`] the binary has, in [`ProbeSymbol::ALL`] order.
    pub probes: Vec<ProbeTarget>,
    /// The probed functions the binary does not have (e.g. no net/http).
    pub missing: Vec<ProbeSymbol>,
    pub offsets: StructOffsets,
    /// Entry addresses of `tagger_common::golang::RUNTIME_GOROUTINES`, 0
    /// for a function the binary lacks.
    pub runtime_goroutines: [u64; tagger_common::golang::RUNTIME_GOROUTINES.len()],
}

impl GoBinary {
    pub fn probe(&self, symbol: ProbeSymbol) -> Option<&ProbeTarget> {
        self.probes.iter().find(|p| p.symbol == symbol)
    }
}

/// Inspects the executable at `path` (e.g. `/proc/PID/exe`). A non-Go file
/// is rejected with [`InspectError::NotGo`] after reading its headers (or,
/// when it has no section headers, its data segments).
pub fn inspect(path: &Path) -> Result<GoBinary, InspectError> {
    let cache = ReadCache::new(open(path)?);
    inspect_in(&cache)
}

/// Whether `path` is a Go x86-64 executable, reading only what decides it.
pub fn is_go_binary(path: &Path) -> Result<bool, InspectError> {
    let cache = ReadCache::new(open(path)?);
    match Image::open(&cache) {
        Ok(_) => Ok(true),
        Err(InspectError::NotGo(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn open(path: &Path) -> Result<File, InspectError> {
    File::open(path).map_err(|source| InspectError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn inspect_in<R: ReadCacheOps>(cache: &ReadCache<R>) -> Result<GoBinary, InspectError> {
    let image = Image::open(cache)?;
    let build = buildinfo::read(&image, image.buildinfo.ok_or(InspectError::NoBuildInfo)?)?;
    let version = GoVersion::parse(&build.version)
        .ok_or_else(|| InspectError::UnparsedVersion(build.version.clone()))?;
    if !version.has_register_abi() {
        return Err(InspectError::NoRegisterAbi(version));
    }
    let table = find_pclntab(&image)?;
    let (probes, missing) = probes::locate(&image, &table, &ProbeSymbol::ALL)?;
    let mut runtime_goroutines = [0; tagger_common::golang::RUNTIME_GOROUTINES.len()];
    for (entry, name) in runtime_goroutines
        .iter_mut()
        .zip(tagger_common::golang::RUNTIME_GOROUTINES)
    {
        *entry = table.find(name)?.map_or(0, |f| f.entry);
    }
    let mut offsets = struct_offsets(&image, version)?;
    if offsets.grpc_unknown().is_some()
        && let Some(grpc) = grpc_version(&image)?
    {
        offsets.fill_grpc(grpc);
    }
    Ok(GoBinary {
        version,
        build,
        probes,
        missing,
        offsets,
        runtime_goroutines,
    })
}

/// `.gopclntab`, or when no section names it the first table in a segment
/// without code that parses and is plausible (scanned at 8-byte alignment;
/// the linker aligns it to 32).
fn find_pclntab<'a, R: ReadCacheOps>(image: &Image<'a, R>) -> Result<Pclntab<'a>, InspectError> {
    if let Some(region) = image.pclntab {
        let table = Pclntab::parse(image.read_region(region)?)?;
        return match plausible(image, &table) {
            true => Ok(table),
            false => Err(InspectError::Pclntab("functions outside the code")),
        };
    }
    for bytes in image.data_segments() {
        let bytes = bytes?;
        let found = (0..bytes.len())
            .step_by(8)
            .filter(|&at| Pclntab::looks_like(&bytes[at..]))
            .filter_map(|at| Pclntab::parse(&bytes[at..]).ok())
            .find(|table| plausible(image, table));
        if let Some(table) = found {
            return Ok(table);
        }
    }
    Err(InspectError::NoPclntab)
}

/// The first and last functions are code: the table's addresses are the
/// ones the file is laid out with (not, say, an unrelocated zero base).
fn plausible<R: ReadCacheOps>(image: &Image<'_, R>, table: &Pclntab<'_>) -> bool {
    let (Ok(first), Ok(last)) = (table.func(0), table.func(table.len() - 1)) else {
        return false;
    };
    image.is_code(first.entry) && image.is_code(last.end.saturating_sub(1))
}

/// grpc-go's major.minor from its user agent, `grpc-go/<version>`, a
/// constant every binary that links grpc-go holds (`-s -w` keeps data).
fn grpc_version<R: ReadCacheOps>(image: &Image<'_, R>) -> Result<Option<(u32, u32)>, InspectError> {
    const AGENT: &[u8] = b"grpc-go/";
    for bytes in image.data_segments() {
        let bytes = bytes?;
        let found = memchr::memmem::find_iter(bytes, AGENT)
            .find_map(|at| parse_major_minor(&bytes[at + AGENT.len()..]));
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// `1.33` from the start of `1.33.3...`.
fn parse_major_minor(text: &[u8]) -> Option<(u32, u32)> {
    let number = |text: &[u8]| {
        let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
        let value = std::str::from_utf8(&text[..digits]).ok()?.parse().ok()?;
        Some((value, digits))
    };
    let (major, n) = number(text)?;
    let rest = text.get(n..)?.strip_prefix(b".")?;
    let (minor, m) = number(rest)?;
    (rest.get(m) == Some(&b'.')).then_some((major, minor))
}

fn struct_offsets<R: ReadCacheOps>(
    image: &Image<'_, R>,
    version: GoVersion,
) -> Result<StructOffsets, InspectError> {
    if image.has_dwarf() {
        let values = dwarf::field_offsets(image.data())?;
        // Every Go program has runtime.g: DWARF without it is only the C
        // code's (cgo built with -ldflags=-w), and says nothing about Go.
        if values[Field::GGoid as usize].is_some() {
            return Ok(StructOffsets::from_dwarf(values));
        }
    }
    StructOffsets::for_version(version).ok_or(InspectError::OffsetsUnknown(version))
}
