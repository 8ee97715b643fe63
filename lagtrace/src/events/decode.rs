//! Decoding of ring-buffer records, from the single definition in
//! `lagtrace-common`. Every record's kind and size are checked before any
//! field is read; nothing is transmuted from unchecked bytes.
use std::mem::{offset_of, size_of};

use lagtrace_common::{
    EVENT_SAMPLES, EVENT_SPAN, EVENT_SPAN_EXIT, EventHeader, SampleRec, SamplesEvent, SpanEvent,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Span(SpanEvent),
    Samples(SampleBatch),
}

/// Samples of one iteration of one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleBatch {
    pub tgid: u32,
    pub tid: u32,
    pub iteration: u64,
    pub recs: Vec<SampleRec>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its header")]
    Short { len: usize },
    #[error("record of kind {kind} claims {size} bytes but has {len}")]
    Size { kind: u32, size: u32, len: usize },
    #[error("record of unknown kind {kind}")]
    Kind { kind: u32 },
    #[error("sample batch claims {count} samples, room for {room}")]
    Count { count: u32, room: usize },
}

/// Read a plain-integer `#[repr(C)]` value from the start of `buf`.
///
/// Only used for the types of `lagtrace-common`, which are made of integers
/// and arrays of integers, so every bit pattern is a valid value.
fn read<T: Copy>(buf: &[u8], offset: usize) -> T {
    assert!(offset + size_of::<T>() <= buf.len());
    // SAFETY: bounds checked above; T is a plain-integer repr(C) type and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    unsafe { buf.as_ptr().add(offset).cast::<T>().read_unaligned() }
}

pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    if buf.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short { len: buf.len() });
    }
    let header: EventHeader = read(buf, 0);
    if header.size as usize > buf.len() {
        return Err(DecodeError::Size {
            kind: header.kind,
            size: header.size,
            len: buf.len(),
        });
    }
    match header.kind {
        // A span closed by the thread's exit has the same layout.
        EVENT_SPAN | EVENT_SPAN_EXIT => {
            if (header.size as usize) < size_of::<SpanEvent>() {
                return Err(DecodeError::Size {
                    kind: header.kind,
                    size: header.size,
                    len: buf.len(),
                });
            }
            Ok(Event::Span(read(buf, 0)))
        }
        EVENT_SAMPLES => {
            let recs_at = offset_of!(SamplesEvent, recs);
            if (header.size as usize) < recs_at {
                return Err(DecodeError::Size {
                    kind: header.kind,
                    size: header.size,
                    len: buf.len(),
                });
            }
            let iteration: u64 = read(buf, offset_of!(SamplesEvent, iteration));
            let count: u32 = read(buf, offset_of!(SamplesEvent, count));
            let room = (header.size as usize - recs_at) / size_of::<SampleRec>();
            if count as usize > room {
                return Err(DecodeError::Count { count, room });
            }
            let recs = (0..count as usize)
                .map(|i| read::<SampleRec>(buf, recs_at + i * size_of::<SampleRec>()))
                .collect();
            Ok(Event::Samples(SampleBatch {
                tgid: header.tgid,
                tid: header.tid,
                iteration,
                recs,
            }))
        }
        kind => Err(DecodeError::Kind { kind }),
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

    #[test]
    fn samples_round_trip_with_count() {
        let mut ev = SamplesEvent {
            header: EventHeader {
                kind: EVENT_SAMPLES,
                size: size_of::<SamplesEvent>() as u32,
                tgid: 7,
                tid: 9,
            },
            iteration: 3,
            count: 2,
            _pad: 0,
            recs: [SampleRec::default(); lagtrace_common::SAMPLE_BUF],
        };
        ev.recs[0].ts_ns = 11;
        ev.recs[1].ts_ns = 12;
        ev.recs[2].ts_ns = 13;
        let Ok(Event::Samples(b)) = decode(&bytes_of(&ev)) else {
            panic!()
        };
        assert_eq!(
            b.recs.iter().map(|r| r.ts_ns).collect::<Vec<_>>(),
            vec![11, 12]
        );
        assert_eq!((b.tid, b.iteration), (9, 3));
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
        let mut one = bytes_of(&s);
        one[0..4].copy_from_slice(&EVENT_SAMPLES.to_le_bytes());
        // count field at offset 24 says 1000 samples in a 104-byte record.
        one[24..28].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            decode(&one),
            Err(DecodeError::Count { count: 1000, .. })
        ));
    }
}
