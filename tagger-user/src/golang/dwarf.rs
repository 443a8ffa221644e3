//! Struct field offsets from the binary's DWARF. Go 1.19 compresses its
//! DWARF sections (SHF_COMPRESSED, zlib; `.zdebug_*` before 1.12); `object`
//! decompresses either form. Go names each struct type once, with its
//! package path (`net/http.persistConn`), and gives members constant
//! `DW_AT_data_member_location`s.
use std::borrow::Cow;

use gimli::{AttributeValue, DwarfSections, EndianSlice, LittleEndian, SectionId, constants};
use object::{Object, ObjectSection, ReadCache, ReadCacheOps, read::elf::ElfFile64};

use super::{error::InspectError, offsets::Field};

/// The sections naming struct types and members: the rest (line tables,
/// locations, frames: most of the DWARF) is never decompressed.
const NEEDED: [SectionId; 3] = [
    SectionId::DebugInfo,
    SectionId::DebugAbbrev,
    SectionId::DebugStr,
];

/// Every field's offset that the DWARF gives (`None`: its struct type is not
/// in the binary).
pub(crate) fn field_offsets<R: ReadCacheOps>(
    data: &ReadCache<R>,
) -> Result<[Option<u64>; Field::COUNT], InspectError> {
    let file = ElfFile64::<object::Endianness, _>::parse(data)?;
    let sections = DwarfSections::load(|id| -> Result<Cow<'_, [u8]>, InspectError> {
        if !NEEDED.contains(&id) {
            return Ok(Cow::Borrowed(&[]));
        }
        match file.section_by_name(id.name()) {
            Some(section) => Ok(section.uncompressed_data()?),
            None => Ok(Cow::Borrowed(&[])),
        }
    })?;
    let dwarf = sections.borrow(|section| EndianSlice::new(section, LittleEndian));
    let mut found = [None; Field::COUNT];
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        // Entries are read from the header alone: `Dwarf::unit` would also
        // parse the line program, from a section we do not load.
        let abbreviations = header.abbreviations(&dwarf.debug_abbrev)?;
        scan_unit(&dwarf, header.entries(&abbreviations), &mut found)?;
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    Ok(found)
}

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// Records the wanted members of the wanted struct types in one unit.
fn scan_unit(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    mut entries: gimli::EntriesCursor<'_, Slice<'_>>,
    found: &mut [Option<u64>; Field::COUNT],
) -> Result<(), InspectError> {
    // The wanted struct whose members are being read, and its depth.
    let mut open: Option<(isize, &str)> = None;
    while let Some(entry) = entries.next_dfs()? {
        let depth = entry.depth();
        if open.is_some_and(|(at, _)| depth <= at) {
            open = None;
        }
        let tag = entry.tag();
        if tag != constants::DW_TAG_structure_type && tag != constants::DW_TAG_member {
            continue;
        }
        let Some(name) = entry.attr_value(constants::DW_AT_name) else {
            continue;
        };
        let Some(name) = name_of(dwarf, name)? else {
            continue;
        };
        if tag == constants::DW_TAG_structure_type {
            open = Field::ALL
                .iter()
                .map(|f| f.dwarf_name().0)
                .find(|ty| *ty == name)
                .map(|ty| (depth, ty));
            continue;
        }
        let Some((at, ty)) = open else { continue };
        if depth != at + 1 {
            continue;
        }
        for field in Field::ALL {
            let slot = &mut found[field as usize];
            if slot.is_none() && field.dwarf_name() == (ty, name) {
                *slot = entry
                    .attr_value(constants::DW_AT_data_member_location)
                    .and_then(|v| constant(&v));
            }
        }
    }
    Ok(())
}

/// A name, inline (as Go writes them) or in `.debug_str` (as C compilers do
/// in cgo binaries); other forms need unit context no Go type uses.
fn name_of<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    value: AttributeValue<Slice<'a>>,
) -> Result<Option<&'a str>, InspectError> {
    let bytes = match value {
        AttributeValue::String(s) => s,
        AttributeValue::DebugStrRef(offset) => dwarf.debug_str.get_str(offset)?,
        _ => return Ok(None),
    };
    Ok(std::str::from_utf8(bytes.slice()).ok())
}

/// A member location given as a constant (location expressions are not
/// what Go emits, and are not guessed at).
fn constant(value: &AttributeValue<Slice<'_>>) -> Option<u64> {
    match *value {
        AttributeValue::Sdata(v) => u64::try_from(v).ok(),
        ref v => v.udata_value(),
    }
}
