//! The functions tagger probes in Go programs, and where in the file their
//! entry and their RET instructions are (uprobes are placed by file offset).
use object::ReadCacheOps;

use super::{disasm, elf::Image, error::InspectError, pclntab::Pclntab};

/// Bounds the code read for one function if the table is damaged (the
/// largest net/http function is a few tens of KiB).
const MAX_FUNC_LEN: u64 = 1 << 20;

/// A Go function tagger places uprobes on (Go >= 1.17 register ABI:
/// arguments in RAX, RBX, RCX, RDI, RSI, R8-R11, receiver first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeSymbol {
    /// Runs in the goroutine that sends the request; RAX = *persistConn.
    PersistConnRoundTrip,
    /// Runs in the handler goroutine; RAX = *Server, RBX/RCX = the
    /// ResponseWriter interface (data word: *response), RDI = *Request.
    ServerHandlerServeHttp,
    /// The connection's goroutine, which reads requests and runs handlers;
    /// RAX = *conn.
    ConnServe,
    /// Entry: RBX = the parent g. At its RETs: RAX = the new g.
    Newproc1,
    /// A goroutine ends (its RET is reached only in the compiler's view:
    /// `mcall(goexit0)` does not come back).
    Goexit1,
    /// grpc-go, on the server connection's reader goroutine: RAX = the
    /// transport, RBX = the decoded `*MetaHeadersFrame`.
    GrpcOperateHeaders,
    /// grpc-go, on the handler's goroutine: RAX = the transport, RBX = the
    /// `*Stream` whose status is written.
    GrpcWriteStatus,
    /// grpc-go, on the calling goroutine; at its RETs RAX = the header
    /// field slice's array.
    GrpcCreateHeaderFields,
    /// grpc-go, on the connection's writer goroutine: RAX = the writer,
    /// RBX = the stream id, RDI = the header field slice's array.
    GrpcWriteHeader,
}

impl ProbeSymbol {
    pub const ALL: [ProbeSymbol; 9] = [
        ProbeSymbol::PersistConnRoundTrip,
        ProbeSymbol::ServerHandlerServeHttp,
        ProbeSymbol::ConnServe,
        ProbeSymbol::Newproc1,
        ProbeSymbol::Goexit1,
        ProbeSymbol::GrpcOperateHeaders,
        ProbeSymbol::GrpcWriteStatus,
        ProbeSymbol::GrpcCreateHeaderFields,
        ProbeSymbol::GrpcWriteHeader,
    ];
    /// grpc-go's, all needed to follow its streams.
    pub const GRPC: [ProbeSymbol; 4] = [
        ProbeSymbol::GrpcOperateHeaders,
        ProbeSymbol::GrpcWriteStatus,
        ProbeSymbol::GrpcCreateHeaderFields,
        ProbeSymbol::GrpcWriteHeader,
    ];

    /// The function's name in `.gopclntab`.
    pub fn name(self) -> &'static str {
        match self {
            ProbeSymbol::PersistConnRoundTrip => "net/http.(*persistConn).roundTrip",
            ProbeSymbol::ServerHandlerServeHttp => "net/http.serverHandler.ServeHTTP",
            ProbeSymbol::ConnServe => "net/http.(*conn).serve",
            ProbeSymbol::Newproc1 => "runtime.newproc1",
            ProbeSymbol::Goexit1 => "runtime.goexit1",
            ProbeSymbol::GrpcOperateHeaders => {
                "google.golang.org/grpc/internal/transport.(*http2Server).operateHeaders"
            }
            ProbeSymbol::GrpcWriteStatus => {
                "google.golang.org/grpc/internal/transport.(*http2Server).WriteStatus"
            }
            ProbeSymbol::GrpcCreateHeaderFields => {
                "google.golang.org/grpc/internal/transport.(*http2Client).createHeaderFields"
            }
            ProbeSymbol::GrpcWriteHeader => {
                "google.golang.org/grpc/internal/transport.(*loopyWriter).writeHeader"
            }
        }
    }
}

/// Where to attach for one function. Offsets are file offsets, as the kernel
/// takes them (aya: `UProbeAttachLocation::AbsoluteOffset`), valid for every
/// process running this file whatever its load address (PIE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub symbol: ProbeSymbol,
    /// `[entry_va, end_va)`: the function's addresses (end includes padding).
    pub entry_va: u64,
    pub end_va: u64,
    /// The file offset of the first instruction.
    pub entry_offset: u64,
    /// The file offsets of its RET instructions, ascending. Empty for a
    /// function that never returns to its caller.
    pub ret_offsets: Vec<u64>,
}

/// Finds each wanted function (one pass over the table) and decodes it.
/// Returns the targets found and the symbols the binary does not have.
pub(crate) fn locate<R: ReadCacheOps>(
    image: &Image<'_, R>,
    table: &Pclntab<'_>,
    wanted: &[ProbeSymbol],
) -> Result<(Vec<ProbeTarget>, Vec<ProbeSymbol>), InspectError> {
    let mut bounds: Vec<Option<(u64, u64)>> = vec![None; wanted.len()];
    for func in table.functions() {
        let func = func?;
        if let Some(i) = wanted.iter().position(|s| s.name() == func.name) {
            bounds[i].get_or_insert((func.entry, func.end));
        }
    }
    let mut targets = Vec::new();
    let mut missing = Vec::new();
    for (&symbol, bounds) in wanted.iter().zip(bounds) {
        match bounds {
            Some((entry, end)) => targets.push(target(image, symbol, entry, end)?),
            None => missing.push(symbol),
        }
    }
    Ok((targets, missing))
}

fn target<R: ReadCacheOps>(
    image: &Image<'_, R>,
    symbol: ProbeSymbol,
    entry_va: u64,
    end_va: u64,
) -> Result<ProbeTarget, InspectError> {
    let len = end_va - entry_va;
    let name = symbol.name();
    let entry_offset = image
        .file_offset(entry_va, len)
        .filter(|_| len > 0 && len <= MAX_FUNC_LEN && image.is_code(entry_va))
        .ok_or(InspectError::NotMapped {
            symbol: name,
            va: entry_va,
        })?;
    let code = image.read(entry_offset, len)?;
    let rets = disasm::rets(code, entry_va)
        .map_err(|va| InspectError::Disassembly { symbol: name, va })?;
    Ok(ProbeTarget {
        symbol,
        entry_va,
        end_va,
        entry_offset,
        ret_offsets: rets
            .into_iter()
            .map(|va| va - entry_va + entry_offset)
            .collect(),
    })
}
