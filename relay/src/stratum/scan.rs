//! A minimal JSON scanner for Stratum request envelopes.
//!
//! Every Stratum request is a flat object `{"id": …, "method": "…", "params": […]}`. On the share
//! path we only need the raw id (to echo back), the method name and the raw text of each
//! parameter; building a generic JSON tree for that would cost more than validating the share's
//! merkle branch. This scanner finds those slices in one pass and checks the JSON's structure on
//! the way. Parameters with nested structure (mining.configure) are handed to serde_json.

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ScanError {
    #[error("not JSON: {what} at byte {at}")]
    Syntax { what: &'static str, at: usize },
    #[error("the request is not a JSON object")]
    NotObject,
    #[error("missing \"method\"")]
    NoMethod,
    #[error("\"params\" is not an array")]
    ParamsNotArray,
}

/// Borrowed pieces of a request line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Raw JSON of the id (`1`, `"a"`, `null`), `None` when absent.
    pub id: Option<&'a str>,
    /// The method name, if it had no escapes (else see `method_escaped`).
    pub method: Option<&'a str>,
    /// Raw JSON text of each element of `params`.
    pub params: Vec<&'a str>,
    pub has_params: bool,
}

/// Where the scanner puts the raw text of each element of `params`.
pub(crate) trait ParamSink<'a> {
    /// A repeated `"params"` key: the last one wins, as with serde_json.
    fn clear(&mut self);
    fn push(&mut self, param: &'a str);
}

impl<'a> ParamSink<'a> for Vec<&'a str> {
    fn clear(&mut self) {
        Vec::clear(self);
    }
    fn push(&mut self, param: &'a str) {
        Vec::push(self, param);
    }
}

/// Parameters kept inline, for the per-share path: no allocation for up to
/// [`InlineParams::CAPACITY`] of them (Stratum requests have at most 6). `len` counts every
/// parameter seen, so a caller can tell when some did not fit.
pub(crate) struct InlineParams<'a> {
    items: [&'a str; InlineParams::CAPACITY],
    len: usize,
}

impl<'a> InlineParams<'a> {
    pub(crate) const CAPACITY: usize = 8;

    pub(crate) fn new() -> Self {
        InlineParams {
            items: [""; Self::CAPACITY],
            len: 0,
        }
    }

    /// The parameters, or `None` when there were more than fit inline.
    pub(crate) fn as_slice(&self) -> Option<&[&'a str]> {
        self.items.get(..self.len)
    }
}

impl<'a> ParamSink<'a> for InlineParams<'a> {
    fn clear(&mut self) {
        self.len = 0;
    }
    #[inline]
    fn push(&mut self, param: &'a str) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = param;
        }
        self.len += 1;
    }
}

/// The envelope fields other than `params`.
pub(crate) struct Head<'a> {
    pub(crate) id: Option<&'a str>,
    pub(crate) method: Option<&'a str>,
}

/// Index of the first byte at or after `i` that ends a run of plain string content: `"`, `\`
/// or a control character (< 0x20); `s.len()` (or `i`, if past the end) when there is none.
/// Scans eight bytes at a time: worker names and hex fields are most of a submit line.
#[inline]
fn string_stop(s: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while i + 8 <= s.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[i..i + 8]);
        let w = u64::from_le_bytes(w);
        let quote = w ^ (ONES * b'"' as u64);
        let backslash = w ^ (ONES * b'\\' as u64);
        // Per byte: high bit set where the byte is zero (quote/backslash) or below 0x20. Borrows
        // only flag bytes above a true hit, so the lowest flag is exact.
        let hits = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < s.len() && !matches!(s[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn err(&self, what: &'static str) -> ScanError {
        ScanError::Syntax { what, at: self.i }
    }

    #[inline]
    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), ScanError> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// Skips a string starting at the opening quote; returns (start, end) of the whole token.
    #[inline(always)]
    fn string(&mut self) -> Result<(usize, usize, bool), ScanError> {
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            self.i = string_stop(self.s, self.i);
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok((start, self.i, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 2;
                }
                Some(_) => return Err(self.err("control character in string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    /// Skips any JSON value; returns the byte range of its text.
    fn value(&mut self, depth: usize) -> Result<(usize, usize), ScanError> {
        if depth > 32 {
            return Err(self.err("nesting too deep"));
        }
        self.ws();
        let start = self.i;
        match self.peek() {
            Some(b'"') => {
                self.string()?;
            }
            Some(b'{') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        if self.peek() != Some(b'"') {
                            return Err(self.err("expected object key"));
                        }
                        self.string()?;
                        self.expect(b':', "expected ':'")?;
                        self.value(depth + 1)?;
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(self.err("expected ',' or '}'")),
                        }
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        self.value(depth + 1)?;
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(self.err("expected ',' or ']'")),
                        }
                    }
                }
            }
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'n') => self.literal(b"null")?,
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                self.i += 1;
                while let Some(c) = self.peek() {
                    if c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-') {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
            }
            _ => return Err(self.err("expected a value")),
        }
        Ok((start, self.i))
    }

    fn literal(&mut self, lit: &[u8]) -> Result<(), ScanError> {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.err("bad literal"))
        }
    }
}

/// Scans a request line. `text` must be valid UTF-8 (callers check once per line).
pub fn scan_envelope(text: &str) -> Result<Envelope<'_>, ScanError> {
    let mut params = Vec::new();
    let mut has_params = false;
    let head = scan_into(text, &mut params, &mut has_params)?;
    Ok(Envelope {
        id: head.id,
        method: head.method,
        params,
        has_params,
    })
}

/// [`scan_envelope`] with the parameters going to `params` (which the caller may keep inline).
pub(crate) fn scan_into<'a>(
    text: &'a str,
    params: &mut impl ParamSink<'a>,
    has_params: &mut bool,
) -> Result<Head<'a>, ScanError> {
    let mut c = Cursor {
        s: text.as_bytes(),
        i: 0,
    };
    c.ws();
    if c.peek() != Some(b'{') {
        return Err(ScanError::NotObject);
    }
    c.i += 1;
    let mut env = Head {
        id: None,
        method: None,
    };
    c.ws();
    if c.peek() == Some(b'}') {
        c.i += 1;
    } else {
        loop {
            c.ws();
            if c.peek() != Some(b'"') {
                return Err(c.err("expected object key"));
            }
            let (ks, ke, _) = c.string()?;
            let key = &text[ks + 1..ke - 1];
            c.expect(b':', "expected ':'")?;
            c.ws();
            match key {
                "params" => {
                    if c.peek() == Some(b'[') {
                        *has_params = true;
                        params.clear();
                        c.i += 1;
                        c.ws();
                        if c.peek() == Some(b']') {
                            c.i += 1;
                        } else {
                            loop {
                                c.ws();
                                // Strings are nearly every parameter: skip the general path.
                                let (s, e) = if c.peek() == Some(b'"') {
                                    let (s, e, _) = c.string()?;
                                    (s, e)
                                } else {
                                    c.value(1)?
                                };
                                params.push(&text[s..e]);
                                c.ws();
                                match c.peek() {
                                    Some(b',') => c.i += 1,
                                    Some(b']') => {
                                        c.i += 1;
                                        break;
                                    }
                                    _ => return Err(c.err("expected ',' or ']'")),
                                }
                            }
                        }
                    } else if c.peek() == Some(b'n') {
                        // "params": null — some clients send it for parameterless methods.
                        c.literal(b"null")?;
                        *has_params = true;
                    } else {
                        return Err(ScanError::ParamsNotArray);
                    }
                }
                "id" => {
                    let (s, e) = c.value(1)?;
                    env.id = Some(&text[s..e]);
                }
                "method" => {
                    let (s, e) = c.value(1)?;
                    let raw = &text[s..e];
                    if raw.len() >= 2 && raw.starts_with('"') && !raw.contains('\\') {
                        env.method = Some(&raw[1..raw.len() - 1]);
                    } else {
                        return Err(ScanError::NoMethod);
                    }
                }
                _ => {
                    c.value(1)?;
                }
            }
            c.ws();
            match c.peek() {
                Some(b',') => c.i += 1,
                Some(b'}') => {
                    c.i += 1;
                    break;
                }
                _ => return Err(c.err("expected ',' or '}'")),
            }
        }
    }
    c.ws();
    if c.i != c.s.len() {
        return Err(c.err("trailing characters after the object"));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn string_stop_naive(s: &[u8], i: usize) -> usize {
        (i..s.len())
            .find(|&j| matches!(s[j], b'"' | b'\\' | 0..=0x1f))
            .unwrap_or(s.len().max(i))
    }

    proptest! {
        #[test]
        fn word_at_a_time_string_stop_agrees_with_a_byte_loop(
            bytes in proptest::collection::vec(prop_oneof![
                Just(b'"'), Just(b'\\'), Just(0x1fu8), Just(0x20u8), Just(0x7fu8), Just(0x80u8),
                Just(0xa2u8), Just(0xdcu8), any::<u8>(), b'a'..=b'f',
            ], 0..40),
            start in 0usize..42,
        ) {
            prop_assert_eq!(string_stop(&bytes, start), string_stop_naive(&bytes, start));
        }
    }

    #[test]
    fn inline_params_report_overflow_instead_of_dropping_silently() {
        let line = r#"{"id":1,"method":"m","params":[1,2,3,4,5,6,7,8,9]}"#;
        let mut p = InlineParams::new();
        let mut has = false;
        scan_into(line, &mut p, &mut has).unwrap();
        assert!(has);
        assert_eq!(p.as_slice(), None);
        let line = r#"{"id":1,"method":"m","params":[1,2],"params":["a"]}"#;
        let mut p = InlineParams::new();
        scan_into(line, &mut p, &mut has).unwrap();
        assert_eq!(p.as_slice(), Some(&["\"a\""][..]));
    }

    #[test]
    fn submit_envelope_in_any_key_order() {
        let e = scan_envelope(
            r#" { "params" : ["w.1","j", "00"], "id":7, "jsonrpc":"2.0", "method":"mining.submit" } "#,
        )
        .unwrap();
        assert_eq!(e.id, Some("7"));
        assert_eq!(e.method, Some("mining.submit"));
        assert_eq!(e.params, vec!["\"w.1\"", "\"j\"", "\"00\""]);
    }

    #[test]
    fn nested_params_are_captured_whole() {
        let e = scan_envelope(
            r#"{"id":"x","method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000","a":[1,{"b":null}]}]}"#,
        )
        .unwrap();
        assert_eq!(e.id, Some("\"x\""));
        assert_eq!(e.params.len(), 2);
        assert!(e.params[1].ends_with("}]}"));
    }

    #[test]
    fn broken_json_is_an_error_with_position() {
        assert!(matches!(
            scan_envelope(r#"{"id":1,"method":"m","params":[1,2"#),
            Err(ScanError::Syntax { .. })
        ));
        assert_eq!(scan_envelope("[1]"), Err(ScanError::NotObject));
        assert!(scan_envelope(r#"{"id":1} x"#).is_err());
        assert!(scan_envelope(r#"{"id":1,"params":{"a":1}}"#).is_err());
    }
}
