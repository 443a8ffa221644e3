//! Go's function table (`.gopclntab`): every Go function's name and entry
//! address. The runtime needs it for stack traces, so it survives
//! `-ldflags='-s -w'` and `strip`, unlike the ELF symbol table.
//!
//! Layout (Go's runtime/symtab.go and debug/gosym): an 8-byte header (magic,
//! two zero bytes, instruction quantum 1, pointer size 8), then words:
//! * Go 1.18+ (magic 0xfffffff0, 0xfffffff1 for 1.20+): nfunc, nfiles,
//!   textStart, then the offsets of funcnametab, cutab, filetab, pctab and
//!   pclntab. The function table at `pclntab` holds nfunc pairs of u32
//!   (entry offset from textStart, offset of the `_func` record), then the
//!   end offset of the last function. A `_func` starts with its entry offset
//!   (u32) and its name's offset in funcnametab (i32).
//! * Go 1.16/1.17 (magic 0xfffffffa): nfunc, nfiles, then the same offsets
//!   without textStart; the pairs are pointer-sized with absolute addresses,
//!   and `_func` starts with the entry address then the name offset.
use super::error::InspectError;

const MAGIC_GO116: u32 = 0xffff_fffa;
const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
const HEADER: usize = 8;
const PTR: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Go 1.16 and 1.17: absolute, pointer-sized entries.
    Go116,
    /// Go 1.18 and later: u32 entries relative to textStart.
    Go118,
}

/// One Go function: `[entry, end)` in virtual addresses. `end` is the next
/// function's entry, so it includes the INT3 padding after the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Func<'a> {
    pub name: &'a str,
    pub entry: u64,
    pub end: u64,
}

#[derive(Debug, Clone)]
pub struct Pclntab<'a> {
    layout: Layout,
    nfunc: usize,
    text_start: u64,
    funcnametab: &'a [u8],
    /// The function table, followed by the `_func` records it points into.
    funcdata: &'a [u8],
}

fn bad(what: &'static str) -> InspectError {
    InspectError::Pclntab(what)
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, InspectError> {
    let bytes = data.get(at..at.saturating_add(4)).ok_or(bad("truncated"))?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

fn u64_at(data: &[u8], at: usize) -> Result<u64, InspectError> {
    let bytes = data.get(at..at.saturating_add(8)).ok_or(bad("truncated"))?;
    Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
}

impl<'a> Pclntab<'a> {
    /// Whether `data` starts like a pclntab for 64-bit little-endian code.
    pub fn looks_like(data: &[u8]) -> bool {
        data.len() >= HEADER
            && matches!(u32_at(data, 0), Ok(MAGIC_GO116 | MAGIC_GO118 | MAGIC_GO120))
            && data[4..8] == [0, 0, 1, PTR as u8]
    }

    pub fn parse(data: &'a [u8]) -> Result<Self, InspectError> {
        if !Self::looks_like(data) {
            return Err(bad("unknown magic or not amd64"));
        }
        let word = |i: usize| u64_at(data, HEADER + i * PTR);
        let tail = |i: usize| -> Result<&'a [u8], InspectError> {
            let at = usize::try_from(word(i)?).map_err(|_| bad("offset"))?;
            data.get(at..).ok_or(bad("offset past the table"))
        };
        let nfunc = usize::try_from(word(0)?).map_err(|_| bad("nfunc"))?;
        let (layout, text_start, names, funcdata) = match u32_at(data, 0)? {
            MAGIC_GO116 => (Layout::Go116, 0, tail(2)?, tail(6)?),
            _ => (Layout::Go118, word(2)?, tail(3)?, tail(7)?),
        };
        let table = Pclntab {
            layout,
            nfunc,
            text_start,
            funcnametab: names,
            funcdata,
        };
        // The table (nfunc pairs and the end entry) must fit.
        let needed = nfunc
            .checked_mul(2)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(table.field_size()))
            .ok_or(bad("nfunc"))?;
        if nfunc == 0 || needed > funcdata.len() {
            return Err(bad("function table does not fit"));
        }
        Ok(table)
    }

    /// The address Go 1.18+ entries are relative to (0 before 1.18).
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    fn field_size(&self) -> usize {
        match self.layout {
            Layout::Go116 => PTR,
            Layout::Go118 => 4,
        }
    }

    fn field(&self, index: usize) -> Result<u64, InspectError> {
        let at = index * self.field_size();
        match self.layout {
            Layout::Go116 => u64_at(self.funcdata, at),
            Layout::Go118 => u32_at(self.funcdata, at).map(u64::from),
        }
    }

    /// The entry address stored as field `index` of the function table.
    fn pc(&self, index: usize) -> Result<u64, InspectError> {
        let value = self.field(index)?;
        match self.layout {
            Layout::Go116 => Ok(value),
            Layout::Go118 => self.text_start.checked_add(value).ok_or(bad("entry")),
        }
    }

    /// Function `i` (0 <= i < len()).
    pub fn func(&self, i: usize) -> Result<Func<'a>, InspectError> {
        let entry = self.pc(2 * i)?;
        let end = self.pc(2 * i + 2)?;
        let record = usize::try_from(self.field(2 * i + 1)?).map_err(|_| bad("record"))?;
        // `_func`: entry (u32 since 1.18, a pointer before), then nameOff.
        let name_field = match self.layout {
            Layout::Go116 => PTR,
            Layout::Go118 => 4,
        };
        let name_off = u32_at(self.funcdata, record.saturating_add(name_field))?;
        let name = self
            .funcnametab
            .get(name_off as usize..)
            .and_then(|rest| rest.split(|&b| b == 0).next())
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .ok_or(bad("function name"))?;
        if end < entry {
            return Err(bad("function table not sorted"));
        }
        Ok(Func { name, entry, end })
    }

    pub fn functions(&self) -> impl Iterator<Item = Result<Func<'a>, InspectError>> + '_ {
        (0..self.nfunc).map(|i| self.func(i))
    }

    /// The function named exactly `name`.
    pub fn find(&self, name: &str) -> Result<Option<Func<'a>>, InspectError> {
        for func in self.functions() {
            let func = func?;
            if func.name == name {
                return Ok(Some(func));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Go 1.18-layout table with two functions, as the linker lays it out.
    fn table_118(text_start: u64) -> Vec<u8> {
        let names = b"main.a\0main.b\0";
        let names_at = HEADER + 8 * PTR;
        let funcs_at = names_at + names.len();
        // Function table: (entryoff, funcoff) x2, end; then two `_func`s.
        let records_at = 5 * 4;
        let words: [u32; 5] = [0x10, records_at, 0x40, records_at + 8, 0x60];
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC_GO118.to_le_bytes());
        data.extend_from_slice(&[0, 0, 1, 8]);
        let header: [u64; 8] = [2, 0, text_start, names_at as u64, 0, 0, 0, funcs_at as u64];
        header.iter().for_each(|w| data.extend(w.to_le_bytes()));
        data.extend_from_slice(names);
        words.iter().for_each(|w| data.extend(w.to_le_bytes()));
        for (entry, name) in [(0x10u32, 0u32), (0x40, 7)] {
            data.extend(entry.to_le_bytes());
            data.extend(name.to_le_bytes());
        }
        data
    }

    #[test]
    fn a_go118_table_lists_names_entries_and_ends() {
        let data = table_118(0x40_1000);
        let table = Pclntab::parse(&data).unwrap();
        let funcs: Vec<Func> = table.functions().map(Result::unwrap).collect();
        let want = [
            Func {
                name: "main.a",
                entry: 0x40_1010,
                end: 0x40_1040,
            },
            Func {
                name: "main.b",
                entry: 0x40_1040,
                end: 0x40_1060,
            },
        ];
        assert_eq!(funcs, want);
        assert_eq!(table.find("main.b").unwrap(), Some(want[1]));
        assert_eq!(table.find("main").unwrap(), None);
    }

    #[test]
    fn damaged_tables_are_errors_not_panics() {
        let data = table_118(0x40_1000);
        for len in 0..data.len() {
            // Every truncation either parses to an error or yields errors.
            if let Ok(table) = Pclntab::parse(&data[..len]) {
                let _ = table.functions().collect::<Vec<_>>();
            }
        }
        let mut wrong_ptr = data.clone();
        wrong_ptr[7] = 4;
        assert!(Pclntab::parse(&wrong_ptr).is_err());
    }
}
