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
    /// `runtime.g.startpc`: the function a goroutine was started with (the
    /// Go runtime's own goroutines, started from whatever user goroutine
    /// triggers them, take nothing from it).
    GStartpc,
    // grpc-go (tagger-ebpf/src/grpc.rs), from DWARF only: grpc-go's
    // layouts change with its own version, which a binary built in GOPATH
    // mode does not record.
    /// `transport.http2Server.conn` (`net.Conn`): `operateHeaders`' and
    /// `WriteStatus`' receiver.
    GrpcServerConn,
    /// `transport.Stream.id`.
    GrpcStreamId,
    /// `transport.loopyWriter.framer`: `writeHeader`'s receiver.
    GrpcLoopyFramer,
    /// `transport.framer.writer` (`*bufWriter`).
    GrpcFramerWriter,
    /// `transport.bufWriter.conn` (`net.Conn`).
    GrpcWriterConn,
    /// `http2.MetaHeadersFrame.Fields`, `http2.FrameHeader.StreamID`,
    /// `hpack.HeaderField.Value` and `.Sensitive`: checked to be where the
    /// probes read them (`tagger_common::golang::h2`).
    H2MetaFields,
    H2StreamId,
    HpackValue,
    HpackSensitive,
}

impl Field {
    pub const COUNT: usize = 22;
    /// The fields the version table gives (the Go runtime's and standard
    /// library's); the rest come from DWARF or not at all.
    pub const RUNTIME_COUNT: usize = 13;
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
        Field::GStartpc,
        Field::GrpcServerConn,
        Field::GrpcStreamId,
        Field::GrpcLoopyFramer,
        Field::GrpcFramerWriter,
        Field::GrpcWriterConn,
        Field::H2MetaFields,
        Field::H2StreamId,
        Field::HpackValue,
        Field::HpackSensitive,
    ];
    /// The grpc-go fields, all needed for its probes.
    pub const GRPC: [Field; 9] = [
        Field::GrpcServerConn,
        Field::GrpcStreamId,
        Field::GrpcLoopyFramer,
        Field::GrpcFramerWriter,
        Field::GrpcWriterConn,
        Field::H2MetaFields,
        Field::H2StreamId,
        Field::HpackValue,
        Field::HpackSensitive,
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
            Field::GStartpc => ("runtime.g", "startpc"),
            Field::GrpcServerConn => (GRPC_TRANSPORT_HTTP2_SERVER, "conn"),
            Field::GrpcStreamId => (GRPC_TRANSPORT_STREAM, "id"),
            Field::GrpcLoopyFramer => (GRPC_TRANSPORT_LOOPY, "framer"),
            Field::GrpcFramerWriter => (GRPC_TRANSPORT_FRAMER, "writer"),
            Field::GrpcWriterConn => (GRPC_TRANSPORT_BUF_WRITER, "conn"),
            Field::H2MetaFields => ("golang.org/x/net/http2.MetaHeadersFrame", "Fields"),
            Field::H2StreamId => ("golang.org/x/net/http2.FrameHeader", "StreamID"),
            Field::HpackValue => ("golang.org/x/net/http2/hpack.HeaderField", "Value"),
            Field::HpackSensitive => ("golang.org/x/net/http2/hpack.HeaderField", "Sensitive"),
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

const GRPC_TRANSPORT_HTTP2_SERVER: &str = "google.golang.org/grpc/internal/transport.http2Server";
const GRPC_TRANSPORT_STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";
const GRPC_TRANSPORT_LOOPY: &str = "google.golang.org/grpc/internal/transport.loopyWriter";
const GRPC_TRANSPORT_FRAMER: &str = "google.golang.org/grpc/internal/transport.framer";
const GRPC_TRANSPORT_BUF_WRITER: &str = "google.golang.org/grpc/internal/transport.bufWriter";

/// Offsets for the Go versions whose layouts were read from a real binary's
/// DWARF (in `Field::ALL` order). Go 1.19: Debian's golang-go 1.19.8, checked
/// against the DWARF of fresh builds by the tests. Other versions are left
/// out until read from a binary of theirs the same way.
const VERSION_TABLE: &[((u32, u32), [u64; Field::RUNTIME_COUNT])] =
    &[((1, 19), [152, 80, 16, 0, 0, 0, 0, 16, 56, 64, 48, 192, 312])];

/// grpc-go's layouts read from real binaries' DWARF, by grpc-go
/// major.minor (its user agent, `grpc-go/<version>`, is in every binary,
/// stripped or not): `GrpcServerConn` .. `GrpcWriterConn` in `Field::GRPC`
/// order. 1.33: Debian's golang-google-grpc-dev 1.33.3, checked against the
/// DWARF of a fresh build by the tests.
const GRPC_TABLE: &[((u32, u32), [u64; 5])] = &[((1, 33), [32, 0, 40, 0, 40])];

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
        let (_, known) = VERSION_TABLE
            .iter()
            .find(|(key, _)| *key == (version.major, version.minor))?;
        let mut values = [None; Field::COUNT];
        for (value, known) in values.iter_mut().zip(known) {
            *value = Some(*known);
        }
        Some(StructOffsets {
            source: OffsetSource::VersionTable,
            values,
        })
    }

    /// Fills grpc-go's fields DWARF did not give from the table for grpc-go
    /// `version` (major, minor), and x/net's from the layout the probes
    /// read; returns whether the table lists that version.
    pub fn fill_grpc(&mut self, version: (u32, u32)) -> bool {
        use tagger_common::golang::h2;
        let Some((_, known)) = GRPC_TABLE.iter().find(|(v, _)| *v == version) else {
            return false;
        };
        let x_net = [
            h2::META_HEADERS_FIELDS,
            h2::FRAME_HEADER_STREAM_ID,
            h2::HEADER_FIELD_VALUE,
            h2::HEADER_FIELD_SIZE - 8,
        ];
        for (field, value) in Field::GRPC.into_iter().zip(known.iter().chain(&x_net)) {
            self.values[field.index()].get_or_insert(*value);
        }
        true
    }

    /// Why grpc-go cannot be probed with these offsets, if it cannot: a
    /// field unknown, or x/net's layout not the one the probes read.
    pub fn grpc_unknown(&self) -> Option<Field> {
        use tagger_common::golang::h2;
        let expected = |field| match field {
            Field::H2MetaFields => Some(h2::META_HEADERS_FIELDS),
            Field::H2StreamId => Some(h2::FRAME_HEADER_STREAM_ID),
            Field::HpackValue => Some(h2::HEADER_FIELD_VALUE),
            // The last member: the struct is 40 bytes with its padding.
            Field::HpackSensitive => Some(h2::HEADER_FIELD_SIZE - 8),
            _ => None,
        };
        Field::GRPC
            .into_iter()
            .find(|&field| match self.get(field) {
                None => true,
                Some(at) => expected(field).is_some_and(|want| want != at),
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
    fn grpc_needs_every_field_and_x_net_where_the_probes_read() {
        let mut values = [Some(8); Field::COUNT];
        values[Field::HpackValue as usize] = Some(16);
        values[Field::HpackSensitive as usize] = Some(32);
        assert_eq!(StructOffsets::from_dwarf(values).grpc_unknown(), None);
        let cases = [
            (Field::GrpcWriterConn, None),
            (Field::H2StreamId, Some(12)),
            (Field::HpackSensitive, Some(40)),
        ];
        for (field, value) in cases {
            let mut changed = values;
            changed[field as usize] = value;
            assert_eq!(
                StructOffsets::from_dwarf(changed).grpc_unknown(),
                Some(field),
                "{field}"
            );
        }
    }

    #[test]
    fn grpc_table_fills_only_what_is_missing_and_only_listed_versions() {
        let v = GoVersion {
            major: 1,
            minor: 19,
            patch: 8,
        };
        let mut table = StructOffsets::for_version(v).unwrap();
        assert!(!table.fill_grpc((1, 60)));
        assert_eq!(table.grpc_unknown(), Some(Field::GrpcServerConn));
        assert!(table.fill_grpc((1, 33)));
        assert_eq!(table.grpc_unknown(), None);
        assert_eq!(table.get(Field::GrpcServerConn), Some(32));
        assert_eq!(table.get(Field::HpackSensitive), Some(32));
        let mut dwarf = StructOffsets::from_dwarf([None; Field::COUNT]);
        dwarf.values[Field::GrpcServerConn.index()] = Some(99);
        dwarf.fill_grpc((1, 33));
        assert_eq!(dwarf.get(Field::GrpcServerConn), Some(99));
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
        assert_eq!(go119.get(Field::MCurg), Some(192));
        // grpc-go's layout is not the Go version's: never from the table.
        assert_eq!(go119.get(Field::GrpcStreamId), None);
        assert_eq!(go119.grpc_unknown(), Some(Field::GrpcServerConn));
        for unknown in [v(18, 0), v(20, 0), v(22, 5)] {
            assert_eq!(StructOffsets::for_version(unknown), None, "{unknown}");
        }
    }
}
