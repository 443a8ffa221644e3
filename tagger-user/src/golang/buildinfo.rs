//! The Go version and main module, from the build info blob the Go linker
//! writes (`.go.buildinfo`): 16 bytes of header (14 of magic, pointer size,
//! flags), then either two pointers to Go strings (before Go 1.18) or, when
//! flag bit 0x2 is set (Go 1.18+), the two strings inline at offset 32, each
//! prefixed by its length as an unsigned varint.
use std::fmt;

use object::ReadCacheOps;

use super::{
    elf::{BUILDINFO_MAGIC, Image, Region},
    error::InspectError,
};

const FLAG_BIG_ENDIAN: u8 = 0x1;
const FLAG_INLINE_STRINGS: u8 = 0x2;
const INLINE_STRINGS_AT: usize = 32;
/// Bounds what a damaged blob can make us read (real ones are a few KiB).
const MAX_BLOB: u64 = 1 << 20;
/// The module info string is framed by 16-byte sentinels.
const MODINFO_SENTINEL: usize = 16;

/// A released Go version: `go1.19.8` is 1.19.8, `go1.20` is 1.20.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    /// Parses `go1.19.8`, `go1.21rc2`, `go1.22.1 X:boringcrypto` and
    /// `devel go1.23-abcdef ...` (the numbers before any suffix).
    pub fn parse(version: &str) -> Option<Self> {
        let version = version.strip_prefix("devel ").unwrap_or(version);
        let mut numbers = version.strip_prefix("go")?.split('.').map(leading_number);
        let major = numbers.next()??;
        let minor = numbers.next()??;
        let patch = numbers.next().flatten().unwrap_or(0);
        Some(GoVersion {
            major,
            minor,
            patch,
        })
    }

    /// Go 1.17 moved amd64 function arguments from the stack to registers.
    pub fn has_register_abi(self) -> bool {
        (self.major, self.minor) >= (1, 17)
    }
}

fn leading_number(part: &str) -> Option<u32> {
    let end = part
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(part.len());
    part[..end].parse().ok()
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What the build info says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// As the binary spells it, e.g. `go1.19.8`.
    pub version: String,
    /// The main module's path (`mod` line of the module info), when built
    /// in module mode.
    pub main_module: Option<String>,
}

pub(crate) fn read<R: ReadCacheOps>(
    image: &Image<'_, R>,
    region: Region,
) -> Result<BuildInfo, InspectError> {
    let blob = image.read(region.offset, region.size.min(MAX_BLOB))?;
    if blob.len() < INLINE_STRINGS_AT || !blob.starts_with(BUILDINFO_MAGIC) {
        return Err(InspectError::BuildInfo("no build info header"));
    }
    let (ptr_size, flags) = (blob[14], blob[15]);
    let (version, modinfo) = if flags & FLAG_INLINE_STRINGS != 0 {
        let mut rest = &blob[INLINE_STRINGS_AT..];
        (varint_string(&mut rest)?, varint_string(&mut rest)?)
    } else {
        if flags & FLAG_BIG_ENDIAN != 0 || ptr_size != 8 {
            return Err(InspectError::BuildInfo("not a little-endian 64-bit header"));
        }
        (
            pointed_string(image, &blob[16..24])?,
            pointed_string(image, &blob[24..32])?,
        )
    };
    let version = String::from_utf8(version.to_vec())
        .map_err(|_| InspectError::BuildInfo("version is not UTF-8"))?;
    if version.is_empty() {
        return Err(InspectError::NoBuildInfo);
    }
    Ok(BuildInfo {
        version,
        main_module: main_module(modinfo),
    })
}

/// A string prefixed by its length as an unsigned LEB128 varint.
fn varint_string<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], InspectError> {
    let mut len: u64 = 0;
    for (i, &byte) in rest.iter().enumerate().take(10) {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let body = &rest[i + 1..];
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= body.len())
                .ok_or(InspectError::BuildInfo("string longer than the blob"))?;
            *rest = &body[len..];
            return Ok(&body[..len]);
        }
    }
    Err(InspectError::BuildInfo("bad varint"))
}

/// Before Go 1.18: `ptr` points at a Go string header (data pointer, length).
fn pointed_string<'a, R: ReadCacheOps>(
    image: &Image<'a, R>,
    ptr: &[u8],
) -> Result<&'a [u8], InspectError> {
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let header = image.read_va(word(ptr), 16)?;
    let (data, len) = (word(&header[..8]), word(&header[8..]));
    if len == 0 {
        return Ok(&[]);
    }
    if len > MAX_BLOB {
        return Err(InspectError::BuildInfo("string longer than the blob"));
    }
    image.read_va(data, len)
}

fn main_module(modinfo: &[u8]) -> Option<String> {
    let n = modinfo.len();
    let body = if n > 2 * MODINFO_SENTINEL && modinfo[n - MODINFO_SENTINEL - 1] == b'\n' {
        &modinfo[MODINFO_SENTINEL..n - MODINFO_SENTINEL]
    } else {
        modinfo
    };
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("mod\t"))
        .and_then(|rest| rest.split('\t').next())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_parse_to_their_numbers() {
        let v = |major, minor, patch| {
            Some(GoVersion {
                major,
                minor,
                patch,
            })
        };
        let cases = [
            ("go1.19.8", v(1, 19, 8)),
            ("go1.20", v(1, 20, 0)),
            ("go1.21rc2", v(1, 21, 0)),
            ("go1.22.1 X:boringcrypto", v(1, 22, 1)),
            ("devel go1.23-abcdef Tue Jan 1", v(1, 23, 0)),
            ("go", None),
            ("1.19.8", None),
            ("gox.19", None),
        ];
        for (text, want) in cases {
            assert_eq!(GoVersion::parse(text), want, "{text}");
        }
        assert!(v(1, 17, 0).unwrap().has_register_abi());
        assert!(!v(1, 16, 15).unwrap().has_register_abi());
    }

    #[test]
    fn varint_strings_and_the_main_module_are_read() {
        let mut modinfo = vec![0u8; MODINFO_SENTINEL];
        modinfo.extend_from_slice(b"path\texample.com/app\nmod\texample.com/app\t(devel)\t\n");
        modinfo.extend_from_slice(&[0u8; MODINFO_SENTINEL]);
        let mut blob = vec![8u8, b'g', b'o', b'1', b'.', b'1', b'9', b'.', b'8'];
        blob.push(modinfo.len() as u8);
        blob.extend_from_slice(&modinfo);
        let mut rest = &blob[..];
        assert_eq!(varint_string(&mut rest).unwrap(), b"go1.19.8");
        let modinfo = varint_string(&mut rest).unwrap();
        assert_eq!(main_module(modinfo).as_deref(), Some("example.com/app"));
        assert!(rest.is_empty());
        assert!(varint_string(&mut &[5u8, b'a'][..]).is_err());
    }
}
