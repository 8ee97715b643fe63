//! 3.13+: the layout from the target's own `_Py_DebugOffsets`, the struct
//! CPython puts at the start of `_PyRuntime` for out-of-process tools
//! (Include/internal/pycore_runtime.h). It starts with the cookie
//! "xdebugpy" and the interpreter's `PY_VERSION_HEX`.
//!
//! The struct's own layout changes between minors (3.14 adds fields), so
//! only the 3.13 layout is decoded here; fields it lacks (`_PyCFrame` is gone
//! anyway; the compact unicode size) come from the generated table.
use super::{
    layout::{RawOffsets, table_entry},
    mem::Mem,
};

/// Byte offsets of the `uint64_t` fields lagtrace reads, in 3.13's
/// `_Py_DebugOffsets` (each nested struct starts with its own `size`).
mod at {
    pub const VERSION: u64 = 8;
    pub const FREE_THREADED: u64 = 16;
    pub const RUNTIME_INTERP_HEAD: u64 = 40;
    pub const INTERP_THREADS_HEAD: u64 = 72;
    pub const TSTATE_NEXT: u64 = 168;
    pub const TSTATE_CURRENT_FRAME: u64 = 184;
    pub const TSTATE_THREAD_ID: u64 = 192;
    pub const TSTATE_NATIVE_THREAD_ID: u64 = 200;
    pub const FRAME_PREVIOUS: u64 = 232;
    pub const FRAME_EXECUTABLE: u64 = 240;
    pub const FRAME_INSTR_PTR: u64 = 248;
    pub const FRAME_OWNER: u64 = 264;
    pub const CODE_FILENAME: u64 = 280;
    pub const CODE_NAME: u64 = 288;
    pub const CODE_QUALNAME: u64 = 296;
    pub const CODE_LINETABLE: u64 = 304;
    pub const CODE_FIRSTLINENO: u64 = 312;
    pub const CODE_ADAPTIVE: u64 = 344;
    pub const OBJECT_TYPE: u64 = 360;
    pub const BYTES_SIZE: u64 = 520;
    pub const BYTES_DATA: u64 = 528;
    pub const UNICODE_STATE: u64 = 544;
    pub const UNICODE_LENGTH: u64 = 552;
    pub const UNICODE_ASCII_SIZE: u64 = 560;
    /// Bytes to read: up to the end of the unicode part.
    pub const END: usize = 568;
}

#[derive(Debug, thiserror::Error)]
pub enum DebugOffsetsError {
    #[error("reading _Py_DebugOffsets: {0}")]
    Read(#[from] std::io::Error),
    #[error("no \"xdebugpy\" cookie at _PyRuntime")]
    NoCookie,
    #[error("_Py_DebugOffsets of 3.{0} are not decoded yet (3.13 only)")]
    Unsupported(u32),
    #[error("a free-threaded build: its thread and frame layout is not supported")]
    FreeThreaded,
    #[error("an offset in _Py_DebugOffsets does not fit in 32 bits")]
    TooLarge,
}

/// The version (`PY_VERSION_HEX`) and offsets read from the target.
pub fn read(mem: &Mem, runtime: u64) -> Result<(u32, RawOffsets), DebugOffsetsError> {
    let mut b = vec![0u8; at::END];
    mem.read(runtime, &mut b)?;
    if &b[..8] != b"xdebugpy" {
        return Err(DebugOffsetsError::NoCookie);
    }
    let u = |off: u64| u64::from_le_bytes(b[off as usize..off as usize + 8].try_into().unwrap());
    let hex = u(at::VERSION) as u32;
    let minor = (hex >> 16) & 0xff;
    if hex >> 24 != 3 || minor != 13 {
        return Err(DebugOffsetsError::Unsupported(minor));
    }
    if u(at::FREE_THREADED) != 0 {
        return Err(DebugOffsetsError::FreeThreaded);
    }
    let o = |off: u64| u32::try_from(u(off)).map_err(|_| DebugOffsetsError::TooLarge);
    let table = table_entry(13).expect("3.13 in the table");
    let raw = RawOffsets {
        minor,
        runtime_interp_head: o(at::RUNTIME_INTERP_HEAD)?,
        interp_tstate_head: o(at::INTERP_THREADS_HEAD)?,
        tstate_next: o(at::TSTATE_NEXT)?,
        tstate_thread_id: o(at::TSTATE_THREAD_ID)?,
        tstate_native_thread_id: o(at::TSTATE_NATIVE_THREAD_ID)?,
        tstate_frame: o(at::TSTATE_CURRENT_FRAME)?,
        cframe_current_frame: table.cframe_current_frame,
        frame_back: o(at::FRAME_PREVIOUS)?,
        frame_code: o(at::FRAME_EXECUTABLE)?,
        frame_instr: o(at::FRAME_INSTR_PTR)?,
        frame_owner: o(at::FRAME_OWNER)?,
        frame_is_entry: table.frame_is_entry,
        code_adaptive: o(at::CODE_ADAPTIVE)?,
        code_filename: o(at::CODE_FILENAME)?,
        code_name: o(at::CODE_NAME)?,
        code_qualname: o(at::CODE_QUALNAME)?,
        code_firstlineno: o(at::CODE_FIRSTLINENO)?,
        code_linetable: o(at::CODE_LINETABLE)?,
        object_type: o(at::OBJECT_TYPE)?,
        bytes_size: o(at::BYTES_SIZE)?,
        bytes_data: o(at::BYTES_DATA)?,
        unicode_length: o(at::UNICODE_LENGTH)?,
        unicode_state: o(at::UNICODE_STATE)?,
        unicode_ascii_size: o(at::UNICODE_ASCII_SIZE)?,
        unicode_compact_size: table.unicode_compact_size,
    };
    Ok((hex, raw))
}
