//! Where a function returns. Go moves goroutine stacks, so a uretprobe (which
//! overwrites the return address on the stack) breaks Go programs; instead a
//! uprobe goes on every RET instruction. Those are found by decoding the
//! function from its entry with a real x86-64 decoder: the byte 0xC3 also
//! occurs inside other instructions (immediates, displacements, ModRM).
use iced_x86::{Code, Decoder, DecoderOptions, Instruction};

/// The addresses of the near RET instructions (`C3`, `C2 imm16`) of the
/// function whose code is `code`, loaded at `entry`. Decoding runs to the
/// end of `code`: Go pads between functions with INT3, which decodes.
///
/// `Err(va)` is the address of an undecodable instruction: Go's amd64 code
/// holds no data between instructions, so this means the bounds are wrong
/// and no probe should be placed.
pub(crate) fn rets(code: &[u8], entry: u64) -> Result<Vec<u64>, u64> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut rets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        match instruction.code() {
            Code::INVALID => return Err(instruction.ip()),
            Code::Retnq | Code::Retnq_imm16 => rets.push(instruction.ip()),
            _ => {}
        }
    }
    Ok(rets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_ret_instructions_are_found() {
        // Hand-assembled, with a 0xC3 byte inside two instructions.
        let code = [
            0xb8, 0xc3, 0x00, 0x00, 0x00, // mov eax, 0xc3
            0x48, 0x8b, 0xc3, // mov rax, rbx (ModRM 0xc3)
            0x74, 0x01, // je +1
            0xc3, // ret
            0xc2, 0x08, 0x00, // ret 8
            0xcc, 0xcc, // int3 padding
        ];
        assert_eq!(rets(&code, 0x1000), Ok(vec![0x100a, 0x100b]));
    }

    #[test]
    fn an_undecodable_byte_is_an_error() {
        // 0x06 (push es) does not exist in 64-bit mode.
        assert_eq!(rets(&[0x90, 0x06, 0xc3], 0x2000), Err(0x2001));
        // A function cut in the middle of an instruction.
        assert_eq!(rets(&[0xc3, 0xb8, 0x01], 0x3000), Err(0x3001));
    }
}
