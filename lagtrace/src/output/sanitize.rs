//! The one place where strings the target controls are made safe for where
//! they leave lagtrace: thread names, comms, Python function and file names,
//! perf-map symbols, paths. A target can put any bytes in these (ESC, BEL,
//! CR, LF, `;`), and lagtrace prints them on root's terminal and writes them
//! into files other tools parse.
//!
//! - [`terminal`]: control characters become visible escapes (`\x1b`,
//!   `\u{202e}`), so no name can move the cursor, retitle the terminal,
//!   forge a line, or reorder text with bidi overrides.
//! - [`folded`]: as terminal, and no `;` (the folded format's separator).
//! - [`xml`]: characters XML 1.0 forbids become escapes too, so the SVG is
//!   always well-formed; markup (`<`, `&`) is escaped by the SVG writer.
//! - JSON needs nothing here: serde_json escapes every C0 control character
//!   (ESC, CR, LF); the value keeps what the target wrote, for tools.
//!
//! It must not drop characters: an escape shows what the target wrote.
use std::{borrow::Cow, fmt::Write};

/// True for characters that must never reach a terminal raw: C0 controls
/// (tab included: it misaligns columns), DEL, C1 controls (0x9b is a CSI on
/// some terminals), and the invisible format characters that reorder or
/// hide text (bidi overrides and isolates, zero-width marks, line and
/// paragraph separators, BOM).
fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}')
}

/// Characters XML 1.0 does not allow in a document (§2.2 `Char`): C0
/// controls other than tab, LF and CR, and U+FFFE/U+FFFF (surrogates cannot
/// occur in a Rust string).
fn is_forbidden_in_xml(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
}

fn escape_where(s: &str, bad: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(&bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !bad(c) {
            out.push(c);
        } else if (c as u32) <= 0xff {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// A target string made safe to print on a terminal.
pub fn terminal(s: &str) -> Cow<'_, str> {
    escape_where(s, is_unsafe_for_terminal)
}

/// A whole line of lagtrace's own text with target strings in it, made safe
/// to print: the same escapes as [`terminal`]. lagtrace's own text has no
/// control characters, so escaping the composed line is the same as
/// escaping each target string in it, and no edge can forget one.
pub fn line(s: &str) -> Cow<'_, str> {
    terminal(s)
}

/// A frame or root name for the folded format: no `;` (it separates
/// frames), no line breaks or other control characters, nothing XML
/// forbids (the SVG is drawn from these lines).
pub fn folded(s: &str) -> Cow<'_, str> {
    let escaped = escape_where(s, |c| is_unsafe_for_terminal(c) || is_forbidden_in_xml(c));
    if escaped.contains(';') {
        Cow::Owned(escaped.replace(';', ":"))
    } else {
        escaped
    }
}

/// Text for an XML document (before markup escaping): characters XML 1.0
/// forbids, and the terminal's unsafe ones, shown as escapes.
pub fn xml(s: &str) -> Cow<'_, str> {
    escape_where(s, |c| is_unsafe_for_terminal(c) || is_forbidden_in_xml(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "a\x1b]0;pwned\x07\x1b[2J\r\n00:00:00.000 b\x7f\u{9b}c\u{202e}d\t";

    #[test]
    fn terminal_escapes_every_control_character() {
        let t = terminal(HOSTILE);
        assert_eq!(
            t,
            "a\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x0a00:00:00.000 b\\x7f\\x9bc\\u{202e}d\\x09"
        );
        assert!(!t.chars().any(is_unsafe_for_terminal));
        // Ordinary names, non-ASCII included, pass unchanged and unallocated.
        for ok in ["MainThread", "tokio-rt-worker", "é漢字 ← x (a/b.py:3)", ""] {
            assert!(matches!(terminal(ok), Cow::Borrowed(s) if s == ok));
        }
    }

    #[test]
    fn every_char_below_0x20_and_c1_is_escaped() {
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let s = c.to_string();
            let t = terminal(&s);
            assert_eq!(t, format!("\\x{:02x}", c as u32), "{c:?}");
        }
    }

    #[test]
    fn folded_has_no_separator_or_break() {
        let f = folded("burn;cpu\nnext\x1b");
        assert_eq!(f, "burn:cpu\\x0anext\\x1b");
        let f = folded(HOSTILE);
        assert!(!f.contains(';') && !f.contains('\n') && !f.chars().any(char::is_control));
    }

    #[test]
    fn xml_has_no_forbidden_characters() {
        let x = xml("a\u{0}b\u{b}c\u{fffe}d\u{ffff}<e>&\x1b");
        assert_eq!(x, "a\\x00b\\x0bc\\u{fffe}d\\u{ffff}<e>&\\x1b");
        assert!(!x.chars().any(is_forbidden_in_xml));
    }

    #[test]
    fn json_escapes_control_characters_itself() {
        let j = serde_json::to_string(&serde_json::json!({ "thread": HOSTILE })).unwrap();
        assert!(!j.bytes().any(|b| b < 0x20), "{j:?}");
        assert!(
            j.contains("\\u001b]0;pwned\\u0007") && j.contains("\\r\\n"),
            "{j}"
        );
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["thread"], HOSTILE, "round-trips unchanged");
    }
}
