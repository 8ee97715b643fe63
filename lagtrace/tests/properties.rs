//! Property tests (proptest, a bounded number of cases so that `cargo xtask
//! test` runs them in seconds) for the two parsers of untrusted bytes:
//! ring-buffer records (`events::decode`) and perf maps
//! (`symbolize::perf_map`). Arbitrary input must never panic; valid input
//! must come back whole.
use std::{fs, io::Write, mem::size_of};

use lagtrace::{
    events::{Event, decode},
    symbolize::perf_map::{MAX_LINE, PerfMap, parse_line},
};
use lagtrace_common::{
    EVENT_SAMPLE, EVENT_SPAN, EventHeader, MAX_KERNEL_FRAMES, MAX_PY_FRAMES, MAX_USER_FRAMES,
    SAMPLE_ON_CPU, STACK_END_KINDS, SampleEvent, SpanEvent,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the repr(C) types of lagtrace-common are plain integers and
    // arrays of integers; every byte of them is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// Bytes that start like a record of a known kind, so the fuzzing gets
/// past the header checks, with the rest arbitrary.
fn record_like() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(EVENT_SPAN), Just(EVENT_SAMPLE), any::<u32>()],
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..4096),
    )
        .prop_map(|(kind, size, mut rest)| {
            let mut b = kind.to_ne_bytes().to_vec();
            b.extend_from_slice(&(size % 8192).to_ne_bytes());
            b.append(&mut rest);
            b
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..8192)) {
        let _ = decode(&b);
    }

    #[test]
    fn decoding_record_like_bytes_never_panics(b in record_like()) {
        let _ = decode(&b);
    }

    #[test]
    fn a_valid_span_round_trips(
        tgid in any::<u32>(), tid in any::<u32>(), iteration in any::<u64>(),
        start in any::<u64>(), len in any::<u32>(), on in any::<u32>(),
    ) {
        let s = SpanEvent {
            header: EventHeader { kind: EVENT_SPAN, size: size_of::<SpanEvent>() as u32, tgid, tid },
            iteration,
            start_ns: start,
            end_ns: start.saturating_add(u64::from(len)),
            on_cpu_ns: u64::from(on),
            ..Default::default()
        };
        let mut b = bytes_of(&s);
        // Ring-buffer records may carry padding after the record.
        b.extend_from_slice(&[0xaa; 8]);
        prop_assert_eq!(decode(&b), Ok(Event::Span(s)));
    }

    #[test]
    fn a_valid_sample_round_trips(
        iteration in any::<u64>(), ts in any::<u64>(),
        user_len in 0..=MAX_USER_FRAMES, kernel_len in 0..=MAX_KERNEL_FRAMES,
        py_len in 0..=MAX_PY_FRAMES, end in 0..STACK_END_KINDS as u8, seed in any::<u64>(),
    ) {
        // SAFETY: SampleEvent is made of plain integers (and arrays of
        // them, or of such structs): all-zero bytes are a valid value.
        let mut ev: SampleEvent = unsafe { std::mem::zeroed() };
        ev.header = EventHeader { kind: EVENT_SAMPLE, size: size_of::<SampleEvent>() as u32, tgid: 1, tid: 2 };
        ev.iteration = iteration;
        let s = &mut ev.sample;
        s.ts_ns = ts;
        s.kind = SAMPLE_ON_CPU;
        (s.user_len, s.kernel_len, s.lang_len) = (user_len as u16, kernel_len as u16, py_len as u16);
        (s.user_end, s.lang_end) = (end, end);
        for (i, a) in s.user.iter_mut().enumerate() {
            *a = seed.wrapping_add(i as u64);
        }
        for (i, a) in s.kernel.iter_mut().enumerate() {
            *a = seed.wrapping_mul(3).wrapping_add(i as u64);
        }
        for (i, f) in s.lang.iter_mut().enumerate() {
            f.code = seed ^ i as u64;
            f.instr_offset = i as u32;
        }
        let Ok(Event::Sample(got)) = decode(&bytes_of(&ev)) else {
            return Err(TestCaseError::fail("not decoded as a sample"));
        };
        prop_assert_eq!((got.tgid, got.tid, got.iteration), (1, 2, iteration));
        prop_assert_eq!(got.rec.ts_ns, ts);
        prop_assert_eq!(&got.rec.user[..], &ev.sample.user[..user_len]);
        prop_assert_eq!(&got.rec.kernel[..], &ev.sample.kernel[..kernel_len]);
        prop_assert_eq!(&got.rec.lang[..], &ev.sample.lang[..py_len]);
    }

    #[test]
    fn a_sample_claiming_too_many_frames_is_refused(extra in 1u16..1000) {
        // SAFETY: as above, all-zero bytes are a valid SampleEvent.
        let mut ev: SampleEvent = unsafe { std::mem::zeroed() };
        ev.header = EventHeader { kind: EVENT_SAMPLE, size: size_of::<SampleEvent>() as u32, tgid: 1, tid: 2 };
        ev.sample.kind = SAMPLE_ON_CPU;
        ev.sample.user_len = MAX_USER_FRAMES as u16 + extra;
        prop_assert!(decode(&bytes_of(&ev)).is_err());
    }

    #[test]
    fn parsing_arbitrary_perf_map_bytes_never_panics(
        b in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'\n'), Just(b' ')], 0..4096),
        addr in any::<u64>(),
    ) {
        let text = String::from_utf8_lossy(&b);
        for line in text.lines() {
            let _ = parse_line(line);
        }
        let mut map = PerfMap::default();
        let _ = map.update(temp_file(&b));
        let _ = map.lookup(addr);
    }

    #[test]
    fn valid_lines_survive_garbage_around_them(
        names in proptest::collection::vec("[ -~]{1,40}", 1..40),
        garbage in proptest::collection::vec("z[^\n]{0,60}", 0..40),
        huge in any::<bool>(),
    ) {
        // Entry i covers [0x10000 * (i + 1), + 0x100); garbage lines start
        // with 'z' (never hex), one may be longer than MAX_LINE.
        let mut text = String::new();
        for (i, name) in names.iter().enumerate() {
            if let Some(g) = garbage.get(i) {
                text.push_str(g);
                text.push('\n');
            }
            if huge && i == 0 {
                text.push_str(&"z".repeat(MAX_LINE * 2));
                text.push('\n');
            }
            text.push_str(&format!("{:x} 100 {name}\n", 0x10000 * (i + 1)));
        }
        let mut map = PerfMap::default();
        let stats = map.update(temp_file(text.as_bytes())).unwrap();
        prop_assert_eq!(map.len(), names.len());
        prop_assert!(stats.bad_lines as usize >= garbage.len().min(names.len()));
        for (i, name) in names.iter().enumerate() {
            let start = 0x10000 * (i as u64 + 1);
            prop_assert_eq!(map.lookup(start + 0xff), Some(name.trim_end_matches('\r')));
            prop_assert_eq!(map.lookup(start + 0x100), None);
        }
    }
}

/// A file holding `bytes`, opened for reading (deleted at once: the open
/// file stays readable).
fn temp_file(bytes: &[u8]) -> fs::File {
    let p = std::env::temp_dir().join(format!(
        "lagtrace-prop-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    let f = fs::File::open(&p).unwrap();
    let _ = fs::remove_file(&p);
    f
}
