//! Tests on real binaries: Go programs built here four ways (plus PIE and
//! one without net/http), checked against Go's and binutils' own tools; and
//! the non-Go executables of this machine.
mod fixture;

use std::{
    cell::Cell,
    fs::{self, File},
    io::{self, Read, Seek},
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use iced_x86::{Decoder, DecoderOptions, Register};
use object::ReadCache;

use super::*;
use fixture::{Build, binary, grpc_binary};

fn inspected(build: Build) -> GoBinary {
    inspect(&binary(build)).unwrap_or_else(|e| panic!("{}: {e}", build.name()))
}

#[test]
fn every_build_is_go_with_its_version_and_module() {
    for build in Build::ALL {
        let path = binary(build);
        assert!(is_go_binary(&path).unwrap(), "{}", build.name());
        let go = inspected(build);
        assert!(go.build.version.starts_with("go1.19"), "{go:?}");
        assert_eq!((go.version.major, go.version.minor), (1, 19));
        let module = match build {
            Build::Hello => "example.com/hello",
            _ => "example.com/laneapp",
        };
        assert_eq!(go.build.main_module.as_deref(), Some(module));
    }
}

#[test]
fn every_probe_symbol_is_found_with_rets_inside_it() {
    for build in Build::SERVER {
        let go = inspected(build);
        let file = fs::read(binary(build)).unwrap();
        let what = |p: &ProbeTarget| format!("{} {}", build.name(), p.symbol.name());
        // A net/http program: no grpc-go linked in.
        assert_eq!(go.missing, ProbeSymbol::GRPC, "{}", build.name());
        let symbols: Vec<ProbeSymbol> = go.probes.iter().map(|p| p.symbol).collect();
        assert_eq!(symbols, ProbeSymbol::ALL[..5]);
        for p in &go.probes {
            assert!(!p.ret_offsets.is_empty(), "{}: no RET", what(p));
            let end_offset = p.entry_offset + (p.end_va - p.entry_va);
            for &ret in &p.ret_offsets {
                assert!((p.entry_offset..end_offset).contains(&ret), "{}", what(p));
                assert!(
                    matches!(file[ret as usize], 0xc2 | 0xc3),
                    "{} {ret:#x}",
                    what(p)
                );
            }
            let code = &file[p.entry_offset as usize..end_offset as usize];
            assert!(checks_stack_bound(code), "{}: no Go prologue", what(p));
        }
    }
}

/// Whether the first instructions compare against `g.stackguard0`
/// (`[R14+0x10]`), as every Go function that may grow its stack starts:
/// evidence that an offset is a Go function's entry, even with no symbols.
fn checks_stack_bound(code: &[u8]) -> bool {
    Decoder::with_ip(64, code, 0, DecoderOptions::NONE)
        .into_iter()
        .take(3)
        .any(|i| i.memory_base() == Register::R14 && i.memory_displacement64() == 0x10)
}

#[test]
fn entries_and_rets_match_go_tool_nm_and_objdump() {
    for build in Build::SERVER.into_iter().filter(|&b| b != Build::Stripped) {
        let path = binary(build);
        let (nm, loads) = (fixture::go_nm(&path), fixture::loads(&path));
        for p in inspected(build).probes {
            let name = p.symbol.name();
            assert_eq!(p.entry_va, nm[name], "{} {name}", build.name());
            assert_eq!(p.entry_offset, fixture::offset_of(&loads, nm[name]));
            let rets: Vec<u64> = fixture::objdump_rets(&path, p.entry_va, p.end_va)
                .into_iter()
                .map(|va| fixture::offset_of(&loads, va))
                .collect();
            assert_eq!(p.ret_offsets, rets, "{} {name}", build.name());
        }
    }
    // -s -w changes the symbol table and DWARF, not the code: the stripped
    // build's functions are where the unstripped build's symbols say.
    let (stripped, default) = (inspected(Build::Stripped), inspected(Build::Default));
    assert_eq!(stripped.probes, default.probes);
}

#[test]
fn struct_offsets_come_from_dwarf_else_from_the_version_table() {
    for build in Build::SERVER {
        let go = inspected(build);
        let source = match build.has_go_dwarf() {
            true => OffsetSource::Dwarf,
            false => OffsetSource::VersionTable,
        };
        assert_eq!(go.offsets.source, source, "{}", build.name());
        for field in &Field::ALL[..Field::RUNTIME_COUNT] {
            assert!(go.offsets.get(*field).is_some(), "{} {field}", build.name());
        }
        assert_eq!(go.offsets.grpc_unknown(), Some(Field::GrpcServerConn));
    }
}

#[test]
fn go119_version_table_agrees_with_dwarf() {
    for build in Build::SERVER.into_iter().filter(|b| b.has_go_dwarf()) {
        let go = inspected(build);
        let table = StructOffsets::for_version(go.version).expect("go1.19 in the table");
        for field in Field::ALL[..Field::RUNTIME_COUNT].iter().copied() {
            let (dwarf, listed) = (go.offsets.get(field), table.get(field));
            eprintln!("{} {field}: dwarf {dwarf:?} table {listed:?}", build.name());
            assert_eq!(dwarf, listed, "{} {field}", build.name());
        }
    }
}

#[test]
fn grpc_go_is_found_and_its_layout_known_with_or_without_dwarf() {
    let plain = inspect(&grpc_binary(false)).unwrap();
    let stripped = inspect(&grpc_binary(true)).unwrap();
    for (go, source) in [
        (&plain, OffsetSource::Dwarf),
        (&stripped, OffsetSource::VersionTable),
    ] {
        assert_eq!(go.offsets.source, source);
        for symbol in ProbeSymbol::GRPC {
            let probe = go
                .probe(symbol)
                .unwrap_or_else(|| panic!("{}", symbol.name()));
            assert!(!probe.ret_offsets.is_empty(), "{}", symbol.name());
        }
        assert_eq!(go.offsets.grpc_unknown(), None, "{source:?}");
        // A gRPC-only program: the linker dropped net/http's client.
        assert!(go.missing.contains(&ProbeSymbol::PersistConnRoundTrip));
    }
    // The table for grpc-go 1.33 says what the DWARF says.
    for field in Field::GRPC {
        assert_eq!(
            plain.offsets.get(field),
            stripped.offsets.get(field),
            "{field}"
        );
    }
    let (nm, loads) = (
        fixture::go_nm(&grpc_binary(false)),
        fixture::loads(&grpc_binary(false)),
    );
    for symbol in ProbeSymbol::GRPC {
        let probe = plain.probe(symbol).unwrap();
        assert_eq!(probe.entry_va, nm[symbol.name()], "{}", symbol.name());
        assert_eq!(
            probe.entry_offset,
            fixture::offset_of(&loads, probe.entry_va)
        );
    }
    assert_eq!(plain.probes, stripped.probes);
}

#[test]
fn a_program_without_net_http_has_only_the_runtime_probes() {
    let go = inspected(Build::Hello);
    let found: Vec<ProbeSymbol> = go.probes.iter().map(|p| p.symbol).collect();
    assert_eq!(found, [ProbeSymbol::Newproc1, ProbeSymbol::Goexit1]);
    assert_eq!(go.missing.len(), 7);
    assert_eq!(go.offsets.source, OffsetSource::Dwarf);
    assert_eq!(go.offsets.get(Field::GGoid), Some(152));
    assert_eq!(go.offsets.get(Field::PersistConnConn), None);
}

#[test]
fn the_cgo_build_links_libc_and_the_static_one_nothing() {
    let dynamic = |build| {
        let path = binary(build);
        let out = std::process::Command::new("readelf")
            .args(["-ldW"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        (text.contains("INTERP"), text.contains("[libc.so.6]"))
    };
    assert_eq!(dynamic(Build::Cgo), (true, true));
    assert_eq!(dynamic(Build::Static), (false, false));
}

/// Counts the bytes read from a file, to show a rejection reads little.
struct Counting {
    file: File,
    read: Rc<Cell<u64>>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = Read::read(&mut self.file, buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

impl Seek for Counting {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        Seek::seek(&mut self.file, pos)
    }
}

fn inspect_counting(path: &Path) -> (Result<GoBinary, InspectError>, u64) {
    let read = Rc::new(Cell::new(0));
    let file = File::open(path).unwrap();
    let cache = ReadCache::new(Counting {
        file,
        read: read.clone(),
    });
    (inspect_in(&cache), read.get())
}

#[test]
fn non_go_files_are_rejected_after_reading_their_headers() {
    let scratch = fixture::scratch();
    let script = scratch.join("script.sh");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let tiny = scratch.join("tiny");
    fs::write(&tiny, b"\x7fEL").unwrap();
    let cases: [(PathBuf, NotGoReason); 5] = [
        ("/usr/bin/python3".into(), NotGoReason::NoGoMarkers),
        ("/bin/sh".into(), NotGoReason::NoGoMarkers),
        (std::env::current_exe().unwrap(), NotGoReason::NoGoMarkers),
        (script, NotGoReason::NotElf),
        (tiny, NotGoReason::NotElf),
    ];
    for (path, reason) in cases {
        let (result, read) = inspect_counting(&path);
        let size = fs::metadata(&path).unwrap().len();
        eprintln!(
            "{}: {result:?}, read {read} of {size} bytes",
            path.display()
        );
        assert!(
            matches!(result, Err(InspectError::NotGo(r)) if r == reason),
            "{}: {result:?}",
            path.display()
        );
        assert!(read <= 16 * 1024, "{}: read {read} bytes", path.display());
        assert!(!is_go_binary(&path).unwrap());
    }
}

/// A copy of `build`'s binary with its section headers removed, as sstrip
/// or `objcopy --strip-sections` leave it: only program headers remain.
fn without_section_headers(build: Build) -> PathBuf {
    let mut bytes = fs::read(binary(build)).unwrap();
    bytes[0x28..0x30].fill(0); // e_shoff
    bytes[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
    let path = fixture::scratch().join(format!("{}-noshdr", build.name()));
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_go_binary_without_section_headers_is_still_inspected() {
    // Cgo: its build info is not at the start of the data segment; cgo-pie:
    // not in the first data segment either.
    for build in Build::SERVER {
        let path = without_section_headers(build);
        assert!(is_go_binary(&path).unwrap());
        let (bare, full) = (inspect(&path).unwrap(), inspected(build));
        assert_eq!((&bare.build, &bare.probes), (&full.build, &full.probes));
        // No section headers, so no DWARF to find: the table answers.
        assert_eq!(bare.offsets.source, OffsetSource::VersionTable);
    }
}

/// A copy of `build`'s binary claiming to be built by Go `version` (same
/// length as "go1.19.8", patched in the build info).
fn claiming_version(build: Build, version: &str) -> PathBuf {
    let mut bytes = fs::read(binary(build)).unwrap();
    let magic = bytes
        .windows(14)
        .position(|w| w == elf::BUILDINFO_MAGIC)
        .unwrap();
    let at = magic
        + bytes[magic..]
            .windows(8)
            .position(|w| w == b"go1.19.8")
            .unwrap();
    bytes[at..at + 8].copy_from_slice(version.as_bytes());
    let path = fixture::scratch().join(format!("{}-{version}", build.name()));
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn an_unknown_version_is_probed_only_with_dwarf() {
    let err = inspect(&claiming_version(Build::Stripped, "go1.99.8")).unwrap_err();
    assert!(matches!(err, InspectError::OffsetsUnknown(v) if v.minor == 99));
    assert_eq!(
        err.to_string(),
        "cannot probe: go1.99 not in the offset table and the binary has no DWARF"
    );
    // DWARF of the C code only is no DWARF of Go's types.
    let c_dwarf = inspect(&claiming_version(Build::CgoNoGoDwarf, "go1.99.8")).unwrap_err();
    assert!(
        matches!(c_dwarf, InspectError::OffsetsUnknown(_)),
        "{c_dwarf}"
    );
    let with_dwarf = inspect(&claiming_version(Build::Default, "go1.99.8")).unwrap();
    assert_eq!(with_dwarf.offsets.source, OffsetSource::Dwarf);
    let old = inspect(&claiming_version(Build::Default, "go1.16.8")).unwrap_err();
    assert!(matches!(old, InspectError::NoRegisterAbi(_)), "{old}");
}

#[test]
fn inspect_takes_milliseconds() {
    let builds = Build::SERVER.map(|b| (b.name(), binary(b)));
    let grpc = [
        ("grpc", grpc_binary(false)),
        ("grpc-stripped", grpc_binary(true)),
    ];
    for (name, path) in builds.into_iter().chain(grpc) {
        let best = (0..3)
            .map(|_| {
                let start = Instant::now();
                inspect(&path).unwrap();
                start.elapsed()
            })
            .min()
            .unwrap();
        eprintln!("inspect({name}): {best:?}");
        // Generous: the machine is shared; typical runs are far below.
        assert!(best < Duration::from_secs(2), "{name}: {best:?}");
    }
}
