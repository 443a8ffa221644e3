//! Real Go binaries for the tests, built once per test process with the
//! machine's Go (Debian's golang-go 1.19) in a temp dir, offline: standard
//! library only, GOPROXY=off, GOTOOLCHAIN=local. Also the independent tools
//! the results are checked against (`go tool nm`, GNU objdump, readelf).
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// The ways the issue asks Go programs to be built, plus PIEs (loaded at a
/// random base; the function table moves to relocated data) and a program
/// without net/http.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Build {
    /// `go build`: cgo on (gcc is present), so dynamically linked.
    Default,
    /// `-ldflags='-s -w'`: no ELF symbols, no DWARF.
    Stripped,
    /// `CGO_ENABLED=0`: static.
    Static,
    /// `CGO_ENABLED=1` with an `import "C"` file: external linking, libc.
    Cgo,
    /// `-buildmode=pie`, linked by Go.
    Pie,
    /// `-buildmode=pie` with cgo, linked by gcc: `.gopclntab` is merged into
    /// `.data.rel.ro`, with no section of its own.
    CgoPie,
    /// Cgo with `-ldflags=-w`: the DWARF left is only the C code's.
    CgoNoGoDwarf,
    /// A program that does not use net/http.
    Hello,
}

impl Build {
    pub const ALL: [Build; 8] = [
        Build::Default,
        Build::Stripped,
        Build::Static,
        Build::Cgo,
        Build::Pie,
        Build::CgoPie,
        Build::CgoNoGoDwarf,
        Build::Hello,
    ];
    /// The builds of the net/http server.
    pub const SERVER: [Build; 7] = [
        Build::Default,
        Build::Stripped,
        Build::Static,
        Build::Cgo,
        Build::Pie,
        Build::CgoPie,
        Build::CgoNoGoDwarf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Build::Default => "default",
            Build::Stripped => "stripped",
            Build::Static => "static",
            Build::Cgo => "cgo",
            Build::Pie => "pie",
            Build::CgoPie => "cgo-pie",
            Build::CgoNoGoDwarf => "cgo-no-go-dwarf",
            Build::Hello => "hello",
        }
    }

    /// Whether the binary has DWARF describing Go types.
    pub fn has_go_dwarf(self) -> bool {
        !matches!(self, Build::Stripped | Build::CgoNoGoDwarf)
    }

    fn sources(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Build::Hello => HELLO,
            _ => LANEAPP,
        }
    }

    fn cgo_enabled(self) -> Option<&'static str> {
        match self {
            Build::Static => Some("0"),
            Build::Cgo | Build::CgoPie | Build::CgoNoGoDwarf => Some("1"),
            _ => None,
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Build::Stripped => &["-ldflags=-s -w"],
            Build::Cgo => &["-tags", "withc"],
            Build::Pie => &["-buildmode=pie"],
            Build::CgoPie => &["-buildmode=pie", "-tags", "withc"],
            Build::CgoNoGoDwarf => &["-ldflags=-w", "-tags", "withc"],
            _ => &[],
        }
    }
}

const LANEAPP: &[(&str, &str)] = &[
    ("go.mod", include_str!("../testdata/laneapp/go.mod")),
    ("main.go", include_str!("../testdata/laneapp/main.go")),
    ("noc.go", include_str!("../testdata/laneapp/noc.go")),
    ("withc.go", include_str!("../testdata/laneapp/withc.go")),
];
const HELLO: &[(&str, &str)] = &[
    ("go.mod", include_str!("../testdata/hello/go.mod")),
    ("main.go", include_str!("../testdata/hello/main.go")),
];

const DIR_PREFIX: &str = "tagger-golang-test-";

/// The path of `build`'s binary (built on first use).
pub(super) fn binary(build: Build) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build_all).join(build.name())
}

/// A scratch directory of this test process (for patched copies).
pub(super) fn scratch() -> PathBuf {
    binary(Build::Default).parent().unwrap().join("scratch")
}

fn build_all() -> PathBuf {
    let version = Command::new("go").arg("version").output();
    let Some(version) = version.ok().filter(|o| o.status.success()) else {
        panic!(
            "`go` is not on PATH: these tests build Go programs with Debian's golang-go \
             (Go 1.19); install it with `cargo xtask setup` or `apt-get install golang-go`"
        );
    };
    eprintln!(
        "golang tests: {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let tmp = std::env::temp_dir();
    remove_stale_dirs(&tmp);
    let dir = tmp.join(format!("{DIR_PREFIX}{}", std::process::id()));
    fs::create_dir_all(dir.join("scratch")).unwrap();
    for build in Build::ALL {
        let src = dir.join(format!("src-{}", build.name()));
        fs::create_dir_all(&src).unwrap();
        for (name, text) in build.sources() {
            fs::write(src.join(name), text).unwrap();
        }
        let mut go = Command::new("go");
        go.current_dir(&src)
            .args(["build", "-o"])
            .arg(dir.join(build.name()))
            .args(build.flags())
            .arg(".")
            // The Go cache is shared between runs (Go keeps it consistent
            // under concurrent use); everything else is this run's.
            .env("GOCACHE", tmp.join("tagger-golang-gocache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GOFLAGS", "")
            .env("GOENV", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GO111MODULE", "on")
            .env_remove("CGO_ENABLED");
        if let Some(cgo) = build.cgo_enabled() {
            go.env("CGO_ENABLED", cgo);
        }
        let out = go.output().expect("run go build");
        assert!(
            out.status.success(),
            "go build ({}) failed: {}",
            build.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// The grpc-go test app (`tests/apps/grpc-go`), built in GOPATH mode
/// against Debian's golang-google-grpc-dev as the end-to-end tests build
/// it, with DWARF or stripped (`-s -w`); built on first use.
pub(super) fn grpc_binary(stripped: bool) -> PathBuf {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    let (plain, without) = BUILT.get_or_init(|| {
        let dir = binary(Build::Default).parent().unwrap().to_owned();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/apps/grpc-go");
        let build = |name: &str, flags: &[&str]| {
            let out = Command::new("go")
                .args(["build", "-o"])
                .arg(dir.join(name))
                .args(flags)
                .arg(".")
                .current_dir(&source)
                // Shared with the end-to-end harness (tests/src/goapps.rs).
                .env("GOCACHE", source.join("../../../target/go-cache"))
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOPROXY", "off")
                .env("GOTOOLCHAIN", "local")
                .env_remove("GOFLAGS")
                .output()
                .expect("run go build");
            assert!(
                out.status.success(),
                "go build grpc-hop-go (`cargo xtask setup` installs golang-google-grpc-dev): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir.join(name)
        };
        (
            build("grpc", &[]),
            build("grpc-stripped", &["-ldflags=-s -w"]),
        )
    });
    if stripped { without } else { plain }.clone()
}

/// Removes the directories of earlier test processes that have exited (a
/// `OnceLock` is never dropped, so each process leaves its own behind).
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn tool(program: &str, args: &[&str], file: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} {}",
        file.display()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Function addresses from the ELF symbol table, as `go tool nm` lists them.
pub(super) fn go_nm(file: &Path) -> HashMap<String, u64> {
    tool("go", &["tool", "nm"], file)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let addr = u64::from_str_radix(words.next()?, 16).ok()?;
            let _kind = words.next()?;
            Some((words.collect::<Vec<_>>().join(" "), addr))
        })
        .collect()
}

/// `(vaddr, offset, filesz)` of each LOAD program header, from readelf.
pub(super) fn loads(file: &Path) -> Vec<(u64, u64, u64)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    tool("readelf", &["-lW"], file)
        .lines()
        .filter(|line| line.trim_start().starts_with("LOAD"))
        .map(|line| {
            let w: Vec<&str> = line.split_whitespace().collect();
            (hex(w[2]), hex(w[1]), hex(w[4]))
        })
        .collect()
}

/// The file offset of `va` through the LOAD headers readelf lists.
pub(super) fn offset_of(loads: &[(u64, u64, u64)], va: u64) -> u64 {
    let (vaddr, offset, _) = loads
        .iter()
        .find(|(vaddr, _, filesz)| (*vaddr..vaddr + filesz).contains(&va))
        .unwrap_or_else(|| panic!("{va:#x} in no LOAD segment"));
    va - vaddr + offset
}

/// Addresses of the `ret` instructions GNU objdump decodes in `[start, end)`.
pub(super) fn objdump_rets(file: &Path, start: u64, end: u64) -> Vec<u64> {
    let range = [
        format!("--start-address={start:#x}"),
        format!("--stop-address={end:#x}"),
    ];
    let args = ["-d", "--no-show-raw-insn", &range[0], &range[1]];
    tool("objdump", &args, file)
        .lines()
        .filter_map(|line| {
            let (addr, insn) = line.trim_start().split_once(":\t")?;
            let mnemonic = insn.split_whitespace().next()?;
            matches!(mnemonic, "ret" | "retq")
                .then(|| u64::from_str_radix(addr, 16).ok())
                .flatten()
        })
        .collect()
}
