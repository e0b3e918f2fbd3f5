//! A pure TLS ClientHello parser: SNI and ALPN out of the first bytes of a connection.
//!
//! `parse` is called again on a growing buffer until it stops answering `Incomplete`. It never
//! panics and never reads past its input; every length field is checked against the block that
//! encloses it, so a prefix of a valid hello is always `Incomplete` and never `Malformed`.
//!
//! The handshake message may be split over several TLS records (RFC 8446 §5.1); the records are
//! walked in place by [`HandshakeCursor`] rather than copied, so the only allocations are the
//! SNI `String` and the ALPN `Vec`s that the caller gets back.

/// What a ClientHello offered, as far as peerguard cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// server_name (host_name), if offered.
    pub sni: Option<String>,
    /// ALPN protocol IDs, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// The answer of [`parse`] for the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloParse {
    /// A whole, well-formed ClientHello. Bytes after its last record are not looked at.
    Complete(ClientHello),
    /// The first bytes are not a TLS handshake record: plaintext.
    NotTls,
    /// A ClientHello so far; more bytes are needed. `needed` is the total length (record headers
    /// included) the hello takes at least, known once the handshake header has been read: exact
    /// when the rest of the hello lies in the record already begun, otherwise a lower bound that
    /// counts one more record header. The caller compares it with its size cap to refuse early.
    Incomplete { needed: Option<usize> },
    /// A TLS handshake record whose content is not a valid ClientHello.
    Malformed(MalformedHello),
}

/// Why a TLS handshake record is not a valid ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedHello {
    #[error("TLS record length is 0 or over 2^14+2048")]
    RecordLength,
    #[error("a record inside the ClientHello is not a TLS 3.x handshake record")]
    RecordType,
    #[error("handshake message is not a ClientHello")]
    NotClientHello,
    #[error("declared ClientHello length is larger than any ClientHello can be")]
    HandshakeTooLong,
    #[error("a length field points past the end of its enclosing block")]
    LengthOverrun,
    #[error("bytes left over at the end of a block")]
    TrailingBytes,
    #[error("the record holding the end of the ClientHello carries more bytes")]
    DataAfterHello,
    #[error("legacy_session_id longer than 32 bytes")]
    SessionIdTooLong,
    #[error("cipher_suites empty or of odd length")]
    CipherSuites,
    #[error("compression_methods empty")]
    CompressionMethods,
    #[error("the same extension appears twice")]
    DuplicateExtension,
    #[error("server_name extension: empty list or two host names")]
    ServerNameList,
    #[error("server_name is not a valid ASCII host name")]
    InvalidHostName,
    #[error("ALPN extension: empty protocol list")]
    EmptyAlpnList,
    #[error("ALPN extension: empty protocol name")]
    EmptyAlpnName,
}

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1 allows 2^14 for plaintext; we accept the ciphertext bound 2^14+2048 as the
/// brief asks, being lenient with odd clients while still refusing nonsense.
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;
/// The largest ClientHello body the wire format allows: version, random, session id (32),
/// cipher suites (2^16-2), compression (255) and extensions (2^16-1), with their length
/// prefixes. A declared length above this can only be an attack or garbage.
const MAX_HELLO_BODY_LEN: usize = 2 + 32 + (1 + 32) + (2 + 65534) + (1 + 255) + (2 + 65535);
const EXT_SERVER_NAME: usize = 0;
const EXT_ALPN: usize = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;
const MAX_HOST_NAME_LEN: usize = 253;

/// Whether a connection whose first byte is `first` begins with a TLS handshake record: all that
/// can be told without reading on (a DISABLE port forwards before reading anything).
pub fn starts_handshake_record(first: u8) -> bool {
    first == CONTENT_TYPE_HANDSHAKE
}

/// Parses the first bytes of a connection as a TLS ClientHello.
pub fn parse(buf: &[u8]) -> HelloParse {
    match buf {
        [] => return HelloParse::Incomplete { needed: None },
        [first, ..] if *first != CONTENT_TYPE_HANDSHAKE => return HelloParse::NotTls,
        [_] => return HelloParse::Incomplete { needed: None },
        [_, major, ..] if *major != 3 => return HelloParse::NotTls,
        _ => {}
    }
    let mut cursor = HandshakeCursor::new(buf);
    match parse_handshake(&mut cursor) {
        Ok(hello) => HelloParse::Complete(hello),
        Err(Stop::Incomplete) => HelloParse::Incomplete {
            needed: cursor.needed(),
        },
        Err(Stop::Malformed(why)) => HelloParse::Malformed(why),
    }
}

/// Why parsing stopped before a complete hello.
#[derive(Debug)]
enum Stop {
    Incomplete,
    Malformed(MalformedHello),
}

impl From<MalformedHello> for Stop {
    fn from(why: MalformedHello) -> Self {
        Stop::Malformed(why)
    }
}

fn parse_handshake(cursor: &mut HandshakeCursor<'_>) -> Result<ClientHello, Stop> {
    if cursor.u8()? != usize::from(HANDSHAKE_CLIENT_HELLO) {
        return Err(MalformedHello::NotClientHello.into());
    }
    let body_len = cursor.u24()?;
    if body_len > MAX_HELLO_BODY_LEN {
        return Err(MalformedHello::HandshakeTooLong.into());
    }
    let end = HANDSHAKE_HEADER_LEN + body_len;
    cursor.handshake_end = Some(end);

    cursor.skip_within(2 + 32, end)?; // legacy_version, random
    let session_id_len = cursor.u8_within(end)?;
    if session_id_len > 32 {
        return Err(MalformedHello::SessionIdTooLong.into());
    }
    cursor.skip_within(session_id_len, end)?;
    let suites_len = cursor.u16_within(end)?;
    if suites_len == 0 || suites_len % 2 != 0 {
        return Err(MalformedHello::CipherSuites.into());
    }
    cursor.skip_within(suites_len, end)?;
    let compression_len = cursor.u8_within(end)?;
    if compression_len == 0 {
        return Err(MalformedHello::CompressionMethods.into());
    }
    cursor.skip_within(compression_len, end)?;

    let mut hello = ClientHello::default();
    // Extensions are optional (a TLS 1.0-style hello ends here).
    if cursor.consumed < end {
        let extensions_len = cursor.u16_within(end)?;
        if cursor.consumed + extensions_len != end {
            return Err(if cursor.consumed + extensions_len > end {
                MalformedHello::LengthOverrun
            } else {
                MalformedHello::TrailingBytes
            }
            .into());
        }
        parse_extensions(cursor, end, &mut hello)?;
    }
    if cursor.left_in_record != 0 {
        return Err(MalformedHello::DataAfterHello.into());
    }
    Ok(hello)
}

fn parse_extensions(cursor: &mut HandshakeCursor<'_>, end: usize, hello: &mut ClientHello) -> Result<(), Stop> {
    let mut seen = ExtensionSet::default();
    while cursor.consumed < end {
        let kind = cursor.u16_within(end)?;
        let len = cursor.u16_within(end)?;
        cursor.check_fits(len, end)?;
        if !seen.insert(kind) {
            return Err(MalformedHello::DuplicateExtension.into());
        }
        let ext_end = cursor.consumed + len;
        match kind {
            EXT_SERVER_NAME => hello.sni = parse_server_name(cursor, ext_end)?,
            EXT_ALPN => hello.alpn = parse_alpn(cursor, ext_end)?,
            // Everything else, GREASE (RFC 8701) included, is skipped unread.
            _ => cursor.skip_within(len, ext_end)?,
        }
    }
    Ok(())
}

/// RFC 6066 §3: a non-empty list of (name_type, name); at most one host_name.
fn parse_server_name(cursor: &mut HandshakeCursor<'_>, ext_end: usize) -> Result<Option<String>, Stop> {
    let list_end = list_end(cursor, ext_end, MalformedHello::ServerNameList)?;
    let mut host_name = None;
    while cursor.consumed < list_end {
        let name_type = cursor.u8_within(list_end)?;
        let len = cursor.u16_within(list_end)?;
        if name_type != usize::from(NAME_TYPE_HOST_NAME) {
            cursor.skip_within(len, list_end)?;
            continue;
        }
        if host_name.is_some() {
            return Err(MalformedHello::ServerNameList.into());
        }
        cursor.check_fits(len, list_end)?;
        if len == 0 || len > MAX_HOST_NAME_LEN {
            return Err(MalformedHello::InvalidHostName.into());
        }
        let mut name = Vec::with_capacity(len);
        cursor.take(len, |chunk| name.extend_from_slice(chunk))?;
        host_name = Some(host_name_from(name)?);
    }
    Ok(host_name)
}

/// RFC 7301 §3.1: a non-empty list of non-empty protocol names, kept in client order.
fn parse_alpn(cursor: &mut HandshakeCursor<'_>, ext_end: usize) -> Result<Vec<Vec<u8>>, Stop> {
    let list_end = list_end(cursor, ext_end, MalformedHello::EmptyAlpnList)?;
    let mut protocols = Vec::new();
    while cursor.consumed < list_end {
        let len = cursor.u8_within(list_end)?;
        if len == 0 {
            return Err(MalformedHello::EmptyAlpnName.into());
        }
        cursor.check_fits(len, list_end)?;
        let mut name = Vec::with_capacity(len);
        cursor.take(len, |chunk| name.extend_from_slice(chunk))?;
        protocols.push(name);
    }
    Ok(protocols)
}

/// Reads the u16 list length that opens the SNI and ALPN extensions; it must fill the extension
/// exactly and may not be empty (both RFCs declare `<1..2^16-1>` lists).
fn list_end(cursor: &mut HandshakeCursor<'_>, ext_end: usize, if_empty: MalformedHello) -> Result<usize, Stop> {
    let len = cursor.u16_within(ext_end)?;
    if cursor.consumed + len != ext_end {
        return Err(MalformedHello::LengthOverrun.into());
    }
    if len == 0 {
        return Err(if_empty.into());
    }
    Ok(ext_end)
}

/// A host name as clients send it in SNI: dot-separated labels of ASCII letters, digits, `-`
/// and `_` (seen in the wild), each 1..=63 bytes, an optional trailing dot.
fn host_name_from(bytes: Vec<u8>) -> Result<String, MalformedHello> {
    let without_root = bytes.strip_suffix(b".").unwrap_or(&bytes);
    let labels_ok = without_root.split(|b| *b == b'.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    });
    if !labels_ok {
        return Err(MalformedHello::InvalidHostName);
    }
    String::from_utf8(bytes).map_err(|_| MalformedHello::InvalidHostName)
}

/// Which extension types were seen: one bit per possible type, on the stack. 8 KiB is cheap to
/// clear and makes duplicate detection O(1) with no cap on the extension count.
struct ExtensionSet([u64; 1024]);

impl Default for ExtensionSet {
    fn default() -> Self {
        ExtensionSet([0; 1024])
    }
}

impl ExtensionSet {
    /// Marks `kind` seen; false if it already was.
    fn insert(&mut self, kind: usize) -> bool {
        let bit = 1u64 << (kind % 64);
        match self.0.get_mut(kind / 64) {
            Some(word) if *word & bit == 0 => {
                *word |= bit;
                true
            }
            _ => false,
        }
    }
}

/// Reads the handshake byte stream out of consecutive handshake records, in place.
///
/// `consumed` counts handshake bytes (record headers excluded); all structural limits are
/// expressed in that space. Running out of input is `Incomplete`; a record that cannot belong to
/// a ClientHello is `Malformed`.
struct HandshakeCursor<'a> {
    buf: &'a [u8],
    /// Index into `buf` of the next unread byte.
    at: usize,
    /// Payload bytes of the current record not read yet.
    left_in_record: usize,
    /// Handshake bytes read so far.
    consumed: usize,
    /// Header plus body length of the handshake message, once its header has been read.
    handshake_end: Option<usize>,
}

impl<'a> HandshakeCursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        HandshakeCursor {
            buf,
            at: 0,
            left_in_record: 0,
            consumed: 0,
            handshake_end: None,
        }
    }

    /// See [`HelloParse::Incomplete`].
    fn needed(&self) -> Option<usize> {
        let remaining = self.handshake_end?.saturating_sub(self.consumed);
        if remaining <= self.left_in_record {
            Some(self.at.saturating_add(remaining))
        } else {
            Some(self.at.saturating_add(remaining).saturating_add(RECORD_HEADER_LEN))
        }
    }

    /// Moves onto the next record once the current one is used up.
    fn ensure_record(&mut self) -> Result<(), Stop> {
        if self.left_in_record > 0 {
            return Ok(());
        }
        let header = self
            .buf
            .get(self.at..self.at + RECORD_HEADER_LEN)
            .ok_or(Stop::Incomplete)?;
        let (content_type, major, len) = match header {
            [content_type, major, _minor, hi, lo] => (*content_type, *major, usize::from(*hi) << 8 | usize::from(*lo)),
            _ => return Err(Stop::Incomplete),
        };
        if content_type != CONTENT_TYPE_HANDSHAKE || major != 3 {
            return Err(MalformedHello::RecordType.into());
        }
        if len == 0 || len > MAX_RECORD_LEN {
            return Err(MalformedHello::RecordLength.into());
        }
        self.at += RECORD_HEADER_LEN;
        self.left_in_record = len;
        Ok(())
    }

    /// Feeds the next `len` handshake bytes to `sink`, one contiguous chunk per record.
    fn take(&mut self, mut len: usize, mut sink: impl FnMut(&[u8])) -> Result<(), Stop> {
        while len > 0 {
            self.ensure_record()?;
            let available = len.min(self.left_in_record).min(self.buf.len().saturating_sub(self.at));
            let chunk = self.buf.get(self.at..self.at + available).unwrap_or_default();
            if chunk.is_empty() {
                return Err(Stop::Incomplete);
            }
            sink(chunk);
            self.at += available;
            self.left_in_record -= available;
            self.consumed += available;
            len -= available;
        }
        Ok(())
    }

    /// Malformed unless `len` more bytes fit before `end`.
    fn check_fits(&self, len: usize, end: usize) -> Result<(), Stop> {
        if self.consumed + len > end {
            return Err(MalformedHello::LengthOverrun.into());
        }
        Ok(())
    }

    fn skip_within(&mut self, len: usize, end: usize) -> Result<(), Stop> {
        self.check_fits(len, end)?;
        self.take(len, |_| ())
    }

    /// A big-endian unsigned integer of `width` bytes (1..=3).
    fn uint(&mut self, width: usize) -> Result<usize, Stop> {
        let mut value = 0;
        self.take(width, |chunk| {
            for byte in chunk {
                value = value << 8 | usize::from(*byte);
            }
        })?;
        Ok(value)
    }

    fn u8(&mut self) -> Result<usize, Stop> {
        self.uint(1)
    }

    fn u24(&mut self) -> Result<usize, Stop> {
        self.uint(3)
    }

    fn u8_within(&mut self, end: usize) -> Result<usize, Stop> {
        self.check_fits(1, end)?;
        self.uint(1)
    }

    fn u16_within(&mut self, end: usize) -> Result<usize, Stop> {
        self.check_fits(2, end)?;
        self.uint(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (extension type, extension data)
    type Extension = (u16, Vec<u8>);

    fn sni_ext(name: &[u8]) -> Extension {
        let mut entry = vec![NAME_TYPE_HOST_NAME];
        entry.extend(u16_be(name.len()));
        entry.extend(name);
        (0, with_u16_len(&entry))
    }

    fn alpn_ext(names: &[&[u8]]) -> Extension {
        let mut list = Vec::new();
        for name in names {
            list.push(name.len() as u8);
            list.extend(*name);
        }
        (16, with_u16_len(&list))
    }

    fn u16_be(n: usize) -> [u8; 2] {
        (n as u16).to_be_bytes()
    }

    fn with_u16_len(bytes: &[u8]) -> Vec<u8> {
        let mut out = u16_be(bytes.len()).to_vec();
        out.extend(bytes);
        out
    }

    /// A ClientHello handshake message (header included) with the given extensions.
    fn handshake(extensions: &[Extension]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7; 32]); // random
        body.push(0); // session id
        body.extend(with_u16_len(&[0x13, 0x01]));
        body.extend([1, 0]); // compression: null
        let mut ext_block = Vec::new();
        for (kind, data) in extensions {
            ext_block.extend(kind.to_be_bytes());
            ext_block.extend(with_u16_len(data));
        }
        body.extend(with_u16_len(&ext_block));
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        message
    }

    /// Wraps handshake bytes in records of at most `fragment` payload bytes.
    fn records(handshake: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in handshake.chunks(fragment) {
            out.extend([CONTENT_TYPE_HANDSHAKE, 3, 1]);
            out.extend(u16_be(chunk.len()));
            out.extend(chunk);
        }
        out
    }

    fn malformed(buf: &[u8]) -> MalformedHello {
        match parse(buf) {
            HelloParse::Malformed(why) => why,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn one_byte_other_than_22_is_not_tls() {
        assert_eq!(parse(b"G"), HelloParse::NotTls);
        assert_eq!(parse(&[22, 2]), HelloParse::NotTls);
        assert_eq!(parse(&[]), HelloParse::Incomplete { needed: None });
        assert_eq!(parse(&[22]), HelloParse::Incomplete { needed: None });
    }

    #[test]
    fn sni_and_alpn_come_out_in_client_order() {
        let message = handshake(&[(0x0a0a, vec![]), sni_ext(b"app.ns.svc"), alpn_ext(&[b"istio", b"h2"])]);
        let expected = ClientHello {
            sni: Some("app.ns.svc".into()),
            alpn: vec![b"istio".to_vec(), b"h2".to_vec()],
        };
        for fragment in [1, 7, 64, 16384] {
            assert_eq!(
                parse(&records(&message, fragment)),
                HelloParse::Complete(expected.clone())
            );
        }
    }

    #[test]
    fn needed_is_exact_within_one_record_and_a_lower_bound_across_records() {
        let message = handshake(&[alpn_ext(&[b"h2"])]);
        let whole = records(&message, 16384);
        assert_eq!(
            parse(&whole[..RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN]),
            HelloParse::Incomplete {
                needed: Some(whole.len())
            }
        );
        let split = records(&message, 20);
        match parse(&split[..RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN]) {
            HelloParse::Incomplete { needed: Some(n) } => assert!(n > 20 && n <= split.len(), "{n}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bytes_after_the_last_record_are_ignored() {
        let mut buf = records(&handshake(&[]), 16384);
        buf.extend([20, 3, 3, 0, 1, 1]); // a TLS 1.3 middlebox-compat ChangeCipherSpec
        assert!(matches!(parse(&buf), HelloParse::Complete(_)));
    }

    #[test]
    fn broken_structure_is_malformed() {
        let good = handshake(&[sni_ext(b"a.b")]);
        let mut server_hello = good.clone();
        server_hello[0] = 2;
        assert_eq!(
            malformed(&records(&server_hello, 16384)),
            MalformedHello::NotClientHello
        );

        let mut huge = good.clone();
        huge[1..4].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(malformed(&records(&huge, 16384)), MalformedHello::HandshakeTooLong);

        assert_eq!(malformed(&[22, 3, 1, 0, 0]), MalformedHello::RecordLength);
        assert_eq!(malformed(&[22, 3, 1, 0x48, 0x01]), MalformedHello::RecordLength);

        let mut interleaved = records(&good, 10);
        interleaved[15] = 23; // the second record claims to be application data
        assert_eq!(malformed(&interleaved), MalformedHello::RecordType);

        let mut long_session = good.clone();
        long_session[4 + 34] = 33;
        assert_eq!(
            malformed(&records(&long_session, 16384)),
            MalformedHello::SessionIdTooLong
        );

        let mut trailing = records(&good, 16384);
        trailing[3..5].copy_from_slice(&u16_be(good.len() + 1));
        trailing.push(0);
        assert_eq!(malformed(&trailing), MalformedHello::DataAfterHello);
    }

    #[test]
    fn bad_extensions_are_malformed() {
        let cases: [(&[Extension], MalformedHello); 6] = [
            (
                &[alpn_ext(&[b"h2"]), alpn_ext(&[b"h2"])],
                MalformedHello::DuplicateExtension,
            ),
            (&[alpn_ext(&[b"istio", b""])], MalformedHello::EmptyAlpnName),
            (&[(16, vec![0, 0])], MalformedHello::EmptyAlpnList),
            (&[(16, vec![0, 9, 2, b'h', b'2'])], MalformedHello::LengthOverrun),
            (&[sni_ext(b"bad host")], MalformedHello::InvalidHostName),
            (&[sni_ext(b"a..b")], MalformedHello::InvalidHostName),
        ];
        for (extensions, expected) in cases {
            assert_eq!(
                malformed(&records(&handshake(extensions), 16384)),
                expected,
                "{extensions:?}"
            );
        }
        let mut two_names = sni_ext(b"a.b");
        let entry = two_names.1[2..].to_vec();
        two_names.1 = with_u16_len(&[entry.clone(), entry].concat());
        assert_eq!(
            malformed(&records(&handshake(&[two_names]), 16384)),
            MalformedHello::ServerNameList
        );
    }

    #[test]
    fn trailing_dot_and_underscore_host_names_are_accepted() {
        for name in ["example.com.", "_svc.example", "xn--bcher-kva.example"] {
            let buf = records(&handshake(&[sni_ext(name.as_bytes())]), 16384);
            assert_eq!(
                parse(&buf),
                HelloParse::Complete(ClientHello {
                    sni: Some(name.into()),
                    alpn: vec![]
                })
            );
        }
    }

    #[test]
    fn every_prefix_of_a_handmade_hello_is_incomplete() {
        let buf = records(
            &handshake(&[sni_ext(b"x.y"), alpn_ext(&[b"istio-peer-exchange", b"istio"])]),
            13,
        );
        for end in 0..buf.len() {
            assert!(
                matches!(parse(&buf[..end]), HelloParse::Incomplete { .. }),
                "prefix {end}"
            );
        }
    }
}
