//! Values a client controls (SNI, ALPN names), made safe for the access log
//! (docs/operating.md#access-log).
//!
//! A ClientHello is unauthenticated, so whatever it carries must not be able to add a line, a
//! field or a terminal control sequence to the log. Both log formats write the same escaped
//! form: printable ASCII stays as it is, `"` and `\` are backslash-escaped, and every other
//! byte (control, DEL, non-ASCII, and `,` inside a list entry, where it would split the entry)
//! is written `\xNN`. The text format puts the result in double quotes, so a space or `=`
//! inside a value stays inside the field; JSON needs no quotes of ours (it quotes by
//! construction), and keeps the same escapes so that a non-UTF-8 byte survives exactly.
//! An absent value is `-`, unquoted, and so never confused with a client that sent `"-"`.

use std::fmt::{self, Write};

/// How the access log is written: whether client values get our quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    Text,
    Json,
}

/// One client-controlled byte string, escaped for `style`.
pub struct ClientText<'a> {
    pub bytes: &'a [u8],
    pub style: LogStyle,
}

/// A client-controlled list (ALPN names in the client's order), escaped entry by entry and
/// joined with `,`; `-` when empty.
pub struct ClientList<'a> {
    pub items: &'a [Vec<u8>],
    pub style: LogStyle,
}

impl fmt::Display for ClientText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        quoted(f, self.style, |f| escape(f, self.bytes, false))
    }
}

impl fmt::Display for ClientList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            return f.write_str("-");
        }
        quoted(f, self.style, |f| {
            for (i, item) in self.items.iter().enumerate() {
                if i > 0 {
                    f.write_char(',')?;
                }
                escape(f, item, true)?;
            }
            Ok(())
        })
    }
}

fn quoted(
    f: &mut fmt::Formatter<'_>,
    style: LogStyle,
    body: impl FnOnce(&mut fmt::Formatter<'_>) -> fmt::Result,
) -> fmt::Result {
    match style {
        LogStyle::Json => body(f),
        LogStyle::Text => {
            f.write_char('"')?;
            body(f)?;
            f.write_char('"')
        }
    }
}

/// Writes `bytes` escaped; with `in_list`, a `,` is escaped too.
fn escape(f: &mut fmt::Formatter<'_>, bytes: &[u8], in_list: bool) -> fmt::Result {
    for &byte in bytes {
        match byte {
            b'"' => f.write_str("\\\"")?,
            b'\\' => f.write_str("\\\\")?,
            b',' if in_list => f.write_str("\\x2c")?,
            b' '..=b'~' => f.write_char(char::from(byte))?,
            _ => write!(f, "\\x{byte:02x}")?,
        }
    }
    Ok(())
}

/// The bytes an escaped value stands for: the inverse of the escaping above, for the tests and
/// for anyone who reads the log back. `None` when `text` is not something [`escape`] writes.
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        match bytes.next()? {
            b'"' => out.push(b'"'),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(bytes: &[u8]) -> String {
        ClientText {
            bytes,
            style: LogStyle::Text,
        }
        .to_string()
    }

    #[test]
    fn hostile_values_become_one_quoted_printable_field() {
        for (raw, written) in [
            (&b"h2"[..], r#""h2""#),
            (b"x\nreason=mtls", r#""x\x0areason=mtls""#),
            (b"x reason=mtls peer=spiffe://a", r#""x reason=mtls peer=spiffe://a""#),
            (b"say \"hi\\", r#""say \"hi\\""#),
            (b"\x1b[31mred", r#""\x1b[31mred""#),
            (b"\xff\xfe", r#""\xff\xfe""#),
            (b"caf\xc3\xa9", r#""caf\xc3\xa9""#),
        ] {
            assert_eq!(text(raw), written);
            let inner = &written[1..written.len() - 1];
            assert_eq!(unescape(inner).as_deref(), Some(raw));
        }
    }

    #[test]
    fn list_entries_keep_their_boundaries() {
        let items = vec![b"a,b".to_vec(), b"h2".to_vec()];
        let list = ClientList {
            items: &items,
            style: LogStyle::Json,
        };
        assert_eq!(list.to_string(), r"a\x2cb,h2");
        let none = ClientList {
            items: &[],
            style: LogStyle::Text,
        };
        assert_eq!(none.to_string(), "-");
    }

    proptest! {
        #[test]
        fn any_bytes_escape_to_printable_ascii_and_back(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let written = text(&raw);
            prop_assert!(written.bytes().all(|b| (b' '..=b'~').contains(&b)));
            let inner = &written[1..written.len() - 1];
            // Between our quotes, every `"` is escaped: the field cannot end early.
            prop_assert!(!inner.replace("\\\\", "").replace("\\\"", "").contains('"'));
            prop_assert_eq!(unescape(inner), Some(raw));
        }
    }
}
