//! The ELF side: is this file a Go x86-64 executable, where are its Go
//! tables, and which file offset holds a given virtual address.
//!
//! Reads go through an [`object::ReadCache`], which reads only the byte
//! ranges asked for: rejecting python3 or node costs the ELF header, the
//! program and section headers and the section names, never the whole file.
use object::{
    Endianness, ReadCache, ReadCacheOps, ReadRef, elf,
    read::elf::{FileHeader, ProgramHeader, SectionHeader, SectionTable},
};

use super::error::{InspectError, NotGoReason};

/// `\xff Go buildinf:`, the start of the build info blob (debug/buildinfo).
pub(crate) const BUILDINFO_MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Without section headers the blob is looked for in this much of the start
/// of the data segment, at this alignment: the linker puts it near the start
/// (Go's debug/buildinfo searches the same window).
const BUILDINFO_WINDOW: u64 = 64 * 1024;
const BUILDINFO_ALIGN: usize = 16;
/// Bounds what one segment scan reads (Go data segments are a few MiB).
const MAX_SCAN: u64 = 256 << 20;
/// Indexes in `e_ident` (the ELF specification's names).
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;

type Header = elf::FileHeader64<Endianness>;

/// A `PT_LOAD` program header: what the loader maps, and from where.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub flags: u32,
}

impl Segment {
    fn contains(&self, va: u64, len: u64) -> bool {
        va >= self.vaddr
            && va
                .checked_add(len)
                .is_some_and(|end| end <= self.vaddr + self.filesz)
    }
    pub fn is_exec(&self) -> bool {
        self.flags & elf::PF_X != 0
    }
    /// Writable data (not code): where Go's build info lives.
    fn is_data(&self) -> bool {
        self.flags & (elf::PF_X | elf::PF_W) == elf::PF_W
    }
}

/// A byte range of the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub offset: u64,
    pub size: u64,
}

/// A 64-bit little-endian x86-64 ELF whose Go markers were found.
pub(crate) struct Image<'a, R: ReadCacheOps> {
    data: &'a ReadCache<R>,
    endian: Endianness,
    pub segments: Vec<Segment>,
    sections: SectionTable<'a, Header, &'a ReadCache<R>>,
    /// The build info blob: its section, or the window it was found in.
    pub buildinfo: Option<Region>,
    /// `.gopclntab` when a section names it (else found by scanning).
    pub pclntab: Option<Region>,
}

impl<'a, R: ReadCacheOps> Image<'a, R> {
    /// Checks the file is an x86-64 ELF carrying Go markers, reading as
    /// little as possible: a non-Go file is rejected after its headers.
    pub fn open(data: &'a ReadCache<R>) -> Result<Self, InspectError> {
        check_ident(data)?;
        let header = Header::parse(data)?;
        let endian = header.endian()?;
        let segments: Vec<Segment> = header
            .program_headers(endian, data)?
            .iter()
            .filter(|p| p.p_type(endian) == elf::PT_LOAD)
            .map(|p| Segment {
                vaddr: p.p_vaddr(endian),
                offset: p.p_offset(endian),
                filesz: p.p_filesz(endian),
                flags: p.p_flags(endian),
            })
            .collect();
        let sections = header.sections(endian, data)?;
        let mut image = Image {
            data,
            endian,
            segments,
            sections,
            buildinfo: None,
            pclntab: None,
        };
        if image.sections.is_empty() {
            // Section headers stripped (sstrip, `objcopy --strip-sections`):
            // only the segments are left, so look for the blob itself.
            image.buildinfo = image.scan_buildinfo()?;
        } else {
            image.buildinfo = image.section(b".go.buildinfo");
            // The Go linker names it `.data.rel.ro.gopclntab` in a PIE; the
            // external linker of a cgo PIE merges it into `.data.rel.ro`.
            image.pclntab = image
                .section(b".gopclntab")
                .or_else(|| image.section(b".data.rel.ro.gopclntab"));
        }
        if image.buildinfo.is_none() && image.pclntab.is_none() {
            return Err(InspectError::NotGo(NotGoReason::NoGoMarkers));
        }
        Ok(image)
    }

    pub fn data(&self) -> &'a ReadCache<R> {
        self.data
    }

    /// The file bytes of a section that occupies file space.
    pub fn section(&self, name: &[u8]) -> Option<Region> {
        let (_, s) = self.sections.section_by_name(self.endian, name)?;
        if s.sh_type(self.endian) == elf::SHT_NOBITS {
            return None;
        }
        Some(Region {
            offset: s.sh_offset(self.endian),
            size: s.sh_size(self.endian),
        })
    }

    /// Whether DWARF type information is present (plain, `.zdebug_` or
    /// SHF_COMPRESSED): only then are struct offsets read from the binary.
    pub fn has_dwarf(&self) -> bool {
        [&b".debug_info"[..], b".zdebug_info"]
            .iter()
            .any(|name| self.section(name).is_some_and(|r| r.size > 0))
    }

    pub fn read(&self, offset: u64, len: u64) -> Result<&'a [u8], InspectError> {
        self.data
            .read_bytes_at(offset, len)
            .map_err(|()| InspectError::Truncated { offset, len })
    }

    pub fn read_region(&self, region: Region) -> Result<&'a [u8], InspectError> {
        self.read(region.offset, region.size)
    }

    /// The file offset the loader maps at `va`, for `len` bytes that must
    /// all come from the file (a uprobe is placed at a file offset).
    pub fn file_offset(&self, va: u64, len: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.contains(va, len))
            .map(|s| va - s.vaddr + s.offset)
    }

    pub fn read_va(&self, va: u64, len: u64) -> Result<&'a [u8], InspectError> {
        let offset = self
            .file_offset(va, len)
            .ok_or(InspectError::Truncated { offset: va, len })?;
        self.read(offset, len)
    }

    pub fn is_code(&self, va: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.is_exec() && s.contains(va, 1))
    }

    /// The build info blob, at a 16-byte aligned offset of a data segment
    /// (file and address alignment agree: segments start on page
    /// boundaries). First in the first 64 KiB of each data segment, where
    /// the Go linker puts it; then in all of them, as external linking of a
    /// PIE puts megabytes of relocated data before it.
    fn scan_buildinfo(&self) -> Result<Option<Region>, InspectError> {
        for limit in [BUILDINFO_WINDOW, MAX_SCAN] {
            for seg in self.segments.iter().filter(|s| s.is_data()) {
                let bytes = self.read(seg.offset, seg.filesz.min(limit))?;
                let found = (0..bytes.len())
                    .step_by(BUILDINFO_ALIGN)
                    .find(|&i| bytes[i..].starts_with(BUILDINFO_MAGIC));
                if let Some(i) = found {
                    return Ok(Some(Region {
                        offset: seg.offset + i as u64,
                        size: (bytes.len() - i) as u64,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The file bytes of each segment that holds no code (where tables are
    /// looked for when no section names them), at most `MAX_SCAN` bytes each.
    pub fn data_segments(&self) -> impl Iterator<Item = Result<&'a [u8], InspectError>> + '_ {
        self.segments
            .iter()
            .filter(|s| !s.is_exec())
            .map(|s| self.read(s.offset, s.filesz.min(MAX_SCAN)))
    }
}

/// The first 20 bytes say ELF, 64-bit, little-endian, x86-64: anything else
/// is rejected before any table is read.
fn check_ident<R: ReadCacheOps>(data: &ReadCache<R>) -> Result<(), InspectError> {
    let Ok(ident) = data.read_bytes_at(0, 20) else {
        return Err(InspectError::NotGo(NotGoReason::NotElf));
    };
    if ident[..4] != elf::ELFMAG {
        return Err(InspectError::NotGo(NotGoReason::NotElf));
    }
    let machine = u16::from_le_bytes([ident[18], ident[19]]);
    if ident[EI_CLASS] != elf::ELFCLASS64
        || ident[EI_DATA] != elf::ELFDATA2LSB
        || machine != elf::EM_X86_64
    {
        return Err(InspectError::NotGo(NotGoReason::NotX86_64));
    }
    Ok(())
}
