//! The struct field offsets the probes read through, from the binary's own
//! DWARF when it has some, else from a table keyed by the Go version. A
//! version the table does not list gives no offsets (the caller then does
//! not probe): a wrong offset would read the wrong memory and tag requests
//! with wrong lanes, which is worse than not tagging them.
use super::buildinfo::GoVersion;

/// A field a probe reads, named as Go's DWARF names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `runtime.g.goid`: the goroutine id, from the g in R14.
    GGoid,
    /// `net/http.persistConn.conn` (a `net.Conn` interface: the data word
    /// is 8 bytes further) in `(*persistConn).roundTrip`'s receiver.
    PersistConnConn,
    /// `net/http.conn.rwc` (a `net.Conn`): `(*conn).serve`'s receiver.
    HttpConnRwc,
    /// `net/http.response.conn`: `serverHandler.ServeHTTP` is given the
    /// `*response` as its `ResponseWriter`.
    HttpResponseConn,
    /// `net.TCPConn.conn`: the embedded `net.conn`.
    TcpConnConn,
    /// `net.conn.fd`: the `*netFD`.
    NetConnFd,
    /// `net.netFD.pfd`: the `poll.FD`, held by value.
    NetFdPfd,
    /// `internal/poll.FD.Sysfd`: the socket's file descriptor.
    PollFdSysfd,
    /// `net.netFD.family`: AF_INET or AF_INET6 for a TCP connection. With
    /// `sotype`, checks that a `net.Conn` really holds a `*net.TCPConn`
    /// (a TLS or wrapped connection reads other memory there).
    NetFdFamily,
    /// `net.netFD.sotype`: SOCK_STREAM.
    NetFdSotype,
    /// `runtime.g.m`: the thread running the goroutine.
    GM,
    /// `runtime.m.curg`: the user goroutine of a thread on its system
    /// stack (the goroutine that called `newproc1`, its parent).
    MCurg,
}

impl Field {
    pub const COUNT: usize = 12;
    pub const ALL: [Field; Field::COUNT] = [
        Field::GGoid,
        Field::PersistConnConn,
        Field::HttpConnRwc,
        Field::HttpResponseConn,
        Field::TcpConnConn,
        Field::NetConnFd,
        Field::NetFdPfd,
        Field::PollFdSysfd,
        Field::NetFdFamily,
        Field::NetFdSotype,
        Field::GM,
        Field::MCurg,
    ];

    /// (struct type, member) as they appear in Go's DWARF.
    pub fn dwarf_name(self) -> (&'static str, &'static str) {
        match self {
            Field::GGoid => ("runtime.g", "goid"),
            Field::PersistConnConn => ("net/http.persistConn", "conn"),
            Field::HttpConnRwc => ("net/http.conn", "rwc"),
            Field::HttpResponseConn => ("net/http.response", "conn"),
            Field::TcpConnConn => ("net.TCPConn", "conn"),
            Field::NetConnFd => ("net.conn", "fd"),
            Field::NetFdPfd => ("net.netFD", "pfd"),
            Field::PollFdSysfd => ("internal/poll.FD", "Sysfd"),
            Field::NetFdFamily => ("net.netFD", "family"),
            Field::NetFdSotype => ("net.netFD", "sotype"),
            Field::GM => ("runtime.g", "m"),
            Field::MCurg => ("runtime.m", "curg"),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ty, member) = self.dwarf_name();
        write!(f, "{ty}.{member}")
    }
}

/// Offsets for the Go versions whose layouts were read from a real binary's
/// DWARF (in `Field::ALL` order). Go 1.19: Debian's golang-go 1.19.8, checked
/// against the DWARF of fresh builds by the tests. Other versions are left
/// out until read from a binary of theirs the same way.
const VERSION_TABLE: &[((u32, u32), [u64; Field::COUNT])] =
    &[((1, 19), [152, 80, 16, 0, 0, 0, 0, 16, 56, 64, 48, 192])];

/// Where the offsets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSource {
    /// The binary's own DWARF.
    Dwarf,
    /// The offset table in this module, for the binary's Go major.minor.
    VersionTable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructOffsets {
    pub source: OffsetSource,
    values: [Option<u64>; Field::COUNT],
}

impl StructOffsets {
    /// The offset of `field` in its struct. `None` only from DWARF, when the
    /// binary has no such type (e.g. no net/http linked in, so nothing to
    /// probe that needs it).
    pub fn get(&self, field: Field) -> Option<u64> {
        self.values[field.index()]
    }

    pub(crate) fn from_dwarf(values: [Option<u64>; Field::COUNT]) -> Self {
        StructOffsets {
            source: OffsetSource::Dwarf,
            values,
        }
    }

    /// The table's offsets for `version`'s major.minor, if it lists them.
    pub fn for_version(version: GoVersion) -> Option<Self> {
        let (_, values) = VERSION_TABLE
            .iter()
            .find(|(key, _)| *key == (version.major, version.minor))?;
        Some(StructOffsets {
            source: OffsetSource::VersionTable,
            values: values.map(Some),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_listed_in_index_order() {
        for (i, field) in Field::ALL.iter().enumerate() {
            assert_eq!(field.index(), i, "{field}");
        }
    }

    #[test]
    fn only_listed_versions_get_table_offsets() {
        let v = |minor, patch| GoVersion {
            major: 1,
            minor,
            patch,
        };
        let go119 = StructOffsets::for_version(v(19, 13)).unwrap();
        assert_eq!(go119.source, OffsetSource::VersionTable);
        assert_eq!(go119.get(Field::GGoid), Some(152));
        for unknown in [v(18, 0), v(20, 0), v(22, 5)] {
            assert_eq!(StructOffsets::for_version(unknown), None, "{unknown}");
        }
    }
}
