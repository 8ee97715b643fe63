//! Decoding of ring-buffer records, from the single definition in
//! `lagtrace-common`. Every record's kind and size are checked before any
//! field is read; nothing is transmuted from unchecked bytes.
use std::mem::{offset_of, size_of};

use lagtrace_common::{
    EVENT_SAMPLE, EVENT_SPAN, EVENT_SPAN_EXIT, EventHeader, LANG_FRAME_JS, LangFrameRec,
    MAX_KERNEL_FRAMES, MAX_PY_FRAMES, MAX_USER_FRAMES, SAMPLE_F_BUFFERED, SAMPLE_OFF_CPU,
    SAMPLE_ON_CPU, SAMPLE_RUNQUEUE, SAMPLE_STOPPED, STACK_END_BAD_FRAME, STACK_END_DEPTH,
    STACK_END_NO_TABLE, STACK_END_NONE, STACK_END_READ_ERROR, STACK_END_ROOT, SampleEvent,
    SpanEvent, StackSample,
};

use crate::spans::StackKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Span(SpanEvent),
    Sample(TaggedSample),
}

/// How a stack walk ended (`STACK_END_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StackEnd {
    /// Not walked.
    #[default]
    None,
    Root,
    Depth,
    NoTable,
    ReadError,
    BadFrame,
}

impl StackEnd {
    /// Every kind, in `STACK_END_*` order (the kernel's counter order).
    pub const ALL: [Self; lagtrace_common::STACK_END_KINDS] = [
        Self::None,
        Self::Root,
        Self::Depth,
        Self::NoTable,
        Self::ReadError,
        Self::BadFrame,
    ];

    fn from_raw(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            STACK_END_NONE => Self::None,
            STACK_END_ROOT => Self::Root,
            STACK_END_DEPTH => Self::Depth,
            STACK_END_NO_TABLE => Self::NoTable,
            STACK_END_READ_ERROR => Self::ReadError,
            STACK_END_BAD_FRAME => Self::BadFrame,
            end => return Err(DecodeError::End { end }),
        })
    }
}

/// One sample, decoded: the record's fields with its frames cut to their
/// lengths (innermost first, as the kernel wrote them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SampleRec {
    pub ts_ns: u64,
    pub weight_ns: u64,
    pub kind: StackKind,
    /// `SAMPLE_F_*`.
    pub flags: u32,
    pub user_end: StackEnd,
    pub lang_end: StackEnd,
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
    /// Language frames: Python, or JS on V8 (`LANG_FRAME_JS`).
    pub lang: Vec<LangFrameRec>,
}

impl SampleRec {
    /// The Python frames of the sample: its language frames unless they
    /// are V8's (a sample holds frames of one language only).
    pub fn python_frames(&self) -> &[LangFrameRec] {
        if self.lang.iter().any(|f| f.flags & LANG_FRAME_JS != 0) {
            &[]
        } else {
            &self.lang
        }
    }

    /// Decode the kernel's record; lengths and kinds are checked.
    pub fn from_kernel(s: &StackSample) -> Result<Self, DecodeError> {
        let kind = match s.kind {
            SAMPLE_ON_CPU => StackKind::OnCpu,
            SAMPLE_OFF_CPU => StackKind::OffCpu,
            SAMPLE_RUNQUEUE => StackKind::Runqueue,
            SAMPLE_STOPPED => StackKind::Stopped,
            kind => return Err(DecodeError::SampleKind { kind }),
        };
        let len = |what, n: u16, max: usize| {
            if n as usize > max {
                Err(DecodeError::Frames { what, n, max })
            } else {
                Ok(n as usize)
            }
        };
        let user = len("user", s.user_len, MAX_USER_FRAMES)?;
        let kernel = len("kernel", s.kernel_len, MAX_KERNEL_FRAMES)?;
        let lang = len("language", s.lang_len, MAX_PY_FRAMES)?;
        Ok(Self {
            ts_ns: s.ts_ns,
            weight_ns: s.weight_ns,
            kind,
            flags: s.flags,
            user_end: StackEnd::from_raw(s.user_end)?,
            lang_end: StackEnd::from_raw(s.lang_end)?,
            user: s.user[..user].to_vec(),
            kernel: s.kernel[..kernel].to_vec(),
            lang: s.lang[..lang].to_vec(),
        })
    }
}

/// A sample of one iteration of one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedSample {
    pub tgid: u32,
    pub tid: u32,
    pub iteration: u64,
    pub rec: SampleRec,
}

impl TaggedSample {
    /// Sent from the pre-threshold slots, not live.
    pub fn buffered(&self) -> bool {
        self.rec.flags & SAMPLE_F_BUFFERED != 0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its header")]
    Short { len: usize },
    #[error("record of kind {kind} claims {size} bytes but has {len}")]
    Size { kind: u32, size: u32, len: usize },
    #[error("record of unknown kind {kind}")]
    Kind { kind: u32 },
    #[error("sample of unknown kind {kind}")]
    SampleKind { kind: u32 },
    #[error("sample claims {n} {what} frames, room for {max}")]
    Frames {
        what: &'static str,
        n: u16,
        max: usize,
    },
    #[error("stack walk with unknown end {end}")]
    End { end: u8 },
}

/// Read a plain-integer `#[repr(C)]` value from `buf` at `offset`.
fn read<T: aya::Pod>(buf: &[u8], offset: usize) -> T {
    assert!(offset + size_of::<T>() <= buf.len());
    // SAFETY: bounds checked above; T is Pod (integers and arrays of
    // integers, every bit pattern valid) and read_unaligned copes with the
    // ring buffer's 8-byte alignment.
    unsafe { buf.as_ptr().add(offset).cast::<T>().read_unaligned() }
}

pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    if buf.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short { len: buf.len() });
    }
    let header: EventHeader = read(buf, 0);
    let need = match header.kind {
        // A span closed by the thread's exit has the same layout.
        EVENT_SPAN | EVENT_SPAN_EXIT => size_of::<SpanEvent>(),
        EVENT_SAMPLE => size_of::<SampleEvent>(),
        kind => return Err(DecodeError::Kind { kind }),
    };
    if header.size as usize > buf.len() || (header.size as usize) < need {
        return Err(DecodeError::Size {
            kind: header.kind,
            size: header.size,
            len: buf.len(),
        });
    }
    match header.kind {
        EVENT_SPAN | EVENT_SPAN_EXIT => Ok(Event::Span(read(buf, 0))),
        _ => {
            let iteration: u64 = read(buf, offset_of!(SampleEvent, iteration));
            let sample: StackSample = read(buf, offset_of!(SampleEvent, sample));
            Ok(Event::Sample(TaggedSample {
                tgid: header.tgid,
                tid: header.tid,
                iteration,
                rec: SampleRec::from_kernel(&sample)?,
            }))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: test helper over the plain repr(C) types of lagtrace-common.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    pub fn span(tid: u32, iteration: u64, start: u64, end: u64) -> SpanEvent {
        SpanEvent {
            header: EventHeader {
                kind: EVENT_SPAN,
                size: size_of::<SpanEvent>() as u32,
                tgid: 7,
                tid,
            },
            iteration,
            start_ns: start,
            end_ns: end,
            on_cpu_ns: end - start,
            ..Default::default()
        }
    }

    #[test]
    fn span_round_trip() {
        let s = span(9, 3, 100, 900);
        assert_eq!(decode(&bytes_of(&s)), Ok(Event::Span(s)));
    }

    pub fn sample_event(tid: u32, iteration: u64, ts_ns: u64) -> SampleEvent {
        let mut sample = StackSample {
            ts_ns,
            weight_ns: 0,
            kind: SAMPLE_ON_CPU,
            flags: 0,
            user_len: 0,
            kernel_len: 0,
            lang_len: 0,
            user_end: STACK_END_ROOT,
            lang_end: STACK_END_NONE,
            user: [0; MAX_USER_FRAMES],
            kernel: [0; MAX_KERNEL_FRAMES],
            lang: [LangFrameRec::default(); MAX_PY_FRAMES],
        };
        sample.user[..3].copy_from_slice(&[0x1000, 0x2000, 0x3000]);
        sample.user_len = 2;
        SampleEvent {
            header: EventHeader {
                kind: EVENT_SAMPLE,
                size: size_of::<SampleEvent>() as u32,
                tgid: 7,
                tid,
            },
            iteration,
            sample,
        }
    }

    #[test]
    fn sample_round_trip_cut_to_its_lengths() {
        let mut ev = sample_event(9, 3, 11);
        ev.sample.kernel[0] = 0xffff_0000;
        ev.sample.kernel_len = 1;
        ev.sample.flags = SAMPLE_F_BUFFERED;
        let Ok(Event::Sample(s)) = decode(&bytes_of(&ev)) else {
            panic!()
        };
        assert_eq!((s.tid, s.iteration, s.rec.ts_ns), (9, 3, 11));
        assert_eq!(s.rec.user, [0x1000, 0x2000]);
        assert_eq!(s.rec.kernel, [0xffff_0000]);
        assert!(s.rec.lang.is_empty());
        assert_eq!(s.rec.user_end, StackEnd::Root);
        assert_eq!(s.rec.kind, StackKind::OnCpu);
        assert!(s.buffered());
    }

    #[test]
    fn malformed_records_are_refused() {
        assert_eq!(decode(&[0u8; 4]), Err(DecodeError::Short { len: 4 }));
        let mut s = span(1, 1, 0, 1);
        s.header.kind = 99;
        assert_eq!(decode(&bytes_of(&s)), Err(DecodeError::Kind { kind: 99 }));
        let s = span(1, 1, 0, 1);
        let b = bytes_of(&s);
        assert!(matches!(decode(&b[..40]), Err(DecodeError::Size { .. })));
        // A span-sized record that claims to be a sample.
        let mut one = bytes_of(&s);
        one[0..4].copy_from_slice(&EVENT_SAMPLE.to_le_bytes());
        assert!(matches!(decode(&one), Err(DecodeError::Size { .. })));
        let mut ev = sample_event(1, 1, 1);
        ev.sample.user_len = MAX_USER_FRAMES as u16 + 1;
        assert!(matches!(
            decode(&bytes_of(&ev)),
            Err(DecodeError::Frames { what: "user", .. })
        ));
        let mut ev = sample_event(1, 1, 1);
        ev.sample.kind = 77;
        assert_eq!(
            decode(&bytes_of(&ev)),
            Err(DecodeError::SampleKind { kind: 77 })
        );
        let mut ev = sample_event(1, 1, 1);
        ev.sample.user_end = 42;
        assert_eq!(decode(&bytes_of(&ev)), Err(DecodeError::End { end: 42 }));
    }
}
