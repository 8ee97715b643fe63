//! V8 JS frames, read during the native walk of a node target (issue #13):
//! for a frame the walk steps by its frame pointer (JIT code, V8's
//! builtins and bytecode handlers have no `.eh_frame` rows), the slots
//! below that frame pointer say whether it is a JS frame and which
//! function it runs. The kernel pushes the function's `SharedFunctionInfo`
//! (its name and script, resolved once in userspace by
//! `lagtrace/src/symbolize/v8/`) with the index of the native frame.
//!
//! A frameless bytecode handler runs on its interpreted function's frame,
//! so the leaf's frame pointer names the function the handler works for.
//! Design after opentelemetry-ebpf-profiler's `v8_tracer.ebpf.c`, which
//! reads the same slots. The target's memory is untrusted: every pointer
//! must carry the heap-object tag and every object the expected instance
//! type, or the frame is not pushed. It must never guess a function.
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_probe_read_user, generated::bpf_loop},
};
use lagtrace_common::{
    JS_NO_OFFSET, LANG_CHECK_SHIFT, LANG_FRAME_JS, LANG_NATIVE_SHIFT, LangFrameRec, MAX_PY_FRAMES,
    StackSample, V8_FP_SLOTS, V8Offsets, js_name_check,
};

/// Heap objects are tagged `01` in their low two bits; Smis end in `0`.
const TAG_MASK: u64 = 3;
const HEAP_TAG: u64 = 1;

#[inline(always)]
fn user<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user copies from any user address and fails
    // cleanly (no fault) where nothing is mapped.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// The untagged address of a heap object, or `None` for anything else.
#[inline(always)]
fn object(tagged: u64) -> Option<u64> {
    (tagged & TAG_MASK == HEAP_TAG).then(|| tagged - HEAP_TAG)
}

/// The instance type an object's map word says.
#[inline(always)]
fn map_type(o: &V8Offsets, map_word: u64) -> Option<u16> {
    let map = object(map_word)?;
    user::<u16>(map + u64::from(o.map_instance_type))
}

/// The JS frame whose frame pointer is `fp`, found in native frame `n`:
/// `None` when the slots do not hold a JS function.
#[inline(always)]
pub fn frame(o: &V8Offsets, fp: u64, n: u32) -> Option<LangFrameRec> {
    const BYTES: u64 = (V8_FP_SLOTS * 8) as u64;
    if fp < BYTES {
        return None;
    }
    let slots: [u64; V8_FP_SLOTS] = user(fp - BYTES)?;
    let at = |i: u8| slots[(i as usize) & (V8_FP_SLOTS - 1)];
    // A typed frame (entry, exit, stub, builtin) keeps a Smi marker where
    // a JS frame keeps its context.
    object(at(o.slot_context))?;
    // Each object is read once, from its map to the last field needed:
    // a helper call per read is most of the cost.
    let func = object(at(o.slot_function))?;
    let f: [u64; 8] = user(func)?;
    let ty = map_type(o, f[0])?;
    if ty < o.type_jsfunction_first || ty > o.type_jsfunction_last {
        return None;
    }
    let sfi_tagged = f[(o.jsfunction_shared as usize / 8) & 7];
    let sfi = object(sfi_tagged)?;
    let sf: [u64; 4] = user(sfi)?;
    if map_type(o, sf[0])? != o.type_sfi {
        return None;
    }
    let name = sf[(o.sfi_name as usize / 8) & 3];
    let offset = at(o.slot_bytecode_offset);
    let instr_offset = if offset & 1 == 0 {
        (offset >> 32) as u32
    } else {
        JS_NO_OFFSET
    };
    Some(LangFrameRec {
        code: sfi_tagged,
        instr_offset,
        flags: LANG_FRAME_JS
            | ((n & 0xff) << LANG_NATIVE_SHIFT)
            | (js_name_check(name) << LANG_CHECK_SHIFT),
    })
}

/// Most JS frames kept per sample (innermost first).
pub const MAX_JS_FRAMES: u32 = MAX_PY_FRAMES as u32;

/// State of the pass over the frame-pointer steps, shared with its
/// `bpf_loop` callback.
#[repr(C)]
struct Pass {
    o: V8Offsets,
    s: *mut StackSample,
    /// Steps to look at, and JS frames kept so far (`kept <= i`).
    steps: u32,
    kept: u32,
}

/// Step `i`: 0 goes on, 1 stops (`bpf_loop`'s contract).
extern "C" fn check_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Pass` that `frames` passed to bpf_loop, on its
    // stack for the whole loop; `p.s` is the per-CPU scratch sample.
    let p = unsafe { &mut *(ctx as *mut Pass) };
    let s = unsafe { &mut *p.s };
    if i as u32 >= p.steps {
        return 1;
    }
    let mask = MAX_JS_FRAMES as usize - 1;
    let step = s.lang[(i as usize) & mask];
    if let Some(rec) = frame(&p.o, step.code, step.flags) {
        s.lang[(p.kept as usize) & mask] = rec;
        p.kept += 1;
    }
    0
}

/// Turn the `steps` frame-pointer steps the native walk left in `s.lang`
/// (frame pointer, native index) into the JS frames among them, in place;
/// returns how many there are.
#[inline(always)]
pub fn frames(o: &V8Offsets, s: &mut StackSample, steps: u16) -> u16 {
    let mut p = Pass {
        o: *o,
        s: s as *mut StackSample,
        steps: u32::from(steps).min(MAX_JS_FRAMES),
        kept: 0,
    };
    // SAFETY: `check_step` matches bpf_loop's callback type and `p`
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_JS_FRAMES,
            check_step as *mut c_void,
            &mut p as *mut Pass as *mut c_void,
            0,
        )
    };
    p.kept.min(MAX_JS_FRAMES) as u16
}
