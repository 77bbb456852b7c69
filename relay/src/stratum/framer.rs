//! Splits a TCP byte stream into Stratum lines.
//!
//! Stratum V1 is newline-delimited JSON. Bytes arrive in arbitrary pieces, so the framer keeps
//! the unfinished tail and remembers how far it has already searched, so a line that trickles in
//! one byte at a time is scanned once, not once per byte. A line longer than the limit is an
//! error; the framer then discards up to the next newline so one bad line costs one error, not
//! the connection's sync.

use bytes::{Buf, BytesMut};

/// Longest line accepted by default. A mining.notify with a 12-level branch and a large coinbase
/// is under 2 KiB; anything near 16 KiB from a miner is garbage or hostile.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("line longer than the {max}-byte limit (at least {seen} bytes without a newline)")]
    LineTooLong { max: usize, seen: usize },
}

/// A streaming line framer over LF- or CRLF-terminated lines.
#[derive(Debug)]
pub struct LineFramer {
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max_line: usize,
    /// Dropping an oversized line until its newline arrives.
    discarding: bool,
}

impl LineFramer {
    pub fn new(max_line: usize) -> Self {
        LineFramer {
            buf: BytesMut::new(),
            scanned: 0,
            max_line,
            discarding: false,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as lines.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Gives back buffer memory when idle (many idle miners should cost little memory).
    pub fn shrink_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
            self.scanned = 0;
        }
    }

    /// The next complete line without its terminator, an error for an oversized line, or `None`
    /// when more bytes are needed. Empty lines are skipped.
    pub fn next_line(&mut self) -> Option<Result<BytesMut, FrameError>> {
        loop {
            let pos = memchr_newline(&self.buf[self.scanned..]).map(|p| p + self.scanned);
            match pos {
                None => {
                    self.scanned = self.buf.len();
                    if self.discarding {
                        self.buf.clear();
                        self.scanned = 0;
                        return None;
                    }
                    if self.buf.len() > self.max_line {
                        let seen = self.buf.len();
                        self.buf.clear();
                        self.scanned = 0;
                        self.discarding = true;
                        return Some(Err(FrameError::LineTooLong {
                            max: self.max_line,
                            seen,
                        }));
                    }
                    return None;
                }
                Some(nl) => {
                    let mut line = self.buf.split_to(nl + 1);
                    self.scanned = 0;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    line.truncate(nl);
                    if line.last() == Some(&b'\r') {
                        line.truncate(nl - 1);
                    }
                    if line.len() > self.max_line {
                        return Some(Err(FrameError::LineTooLong {
                            max: self.max_line,
                            seen: line.len(),
                        }));
                    }
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    return Some(Ok(line));
                }
            }
        }
    }

    /// Drops everything buffered (connection reset).
    pub fn clear(&mut self) {
        self.buf.advance(self.buf.len());
        self.scanned = 0;
        self.discarding = false;
    }
}

#[inline]
fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(f: &mut LineFramer) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = vec![];
        while let Some(r) = f.next_line() {
            out.push(r.map(|l| l.to_vec()));
        }
        out
    }

    #[test]
    fn lf_and_crlf_lines_are_split_and_blank_lines_skipped() {
        let mut f = LineFramer::new(100);
        f.push(b"a\r\nb\n\n  \r\nc");
        assert_eq!(drain(&mut f), vec![Ok(b"a".to_vec()), Ok(b"b".to_vec())]);
        f.push(b"d\n");
        assert_eq!(drain(&mut f), vec![Ok(b"cd".to_vec())]);
    }

    #[test]
    fn oversized_line_is_an_error_and_the_stream_resyncs() {
        let mut f = LineFramer::new(8);
        f.push(b"0123456789");
        assert_eq!(
            drain(&mut f),
            vec![Err(FrameError::LineTooLong { max: 8, seen: 10 })]
        );
        f.push(b"abcdef\nok\n");
        assert_eq!(drain(&mut f), vec![Ok(b"ok".to_vec())]);
    }

    #[test]
    fn oversized_line_in_one_push_with_newline_is_an_error() {
        let mut f = LineFramer::new(4);
        f.push(b"123456\nxy\n");
        assert_eq!(
            drain(&mut f),
            vec![
                Err(FrameError::LineTooLong { max: 4, seen: 6 }),
                Ok(b"xy".to_vec())
            ]
        );
    }

    #[test]
    fn byte_at_a_time_does_not_rescan() {
        let mut f = LineFramer::new(1 << 20);
        for _ in 0..100_000 {
            f.push(b"x");
            assert!(f.next_line().is_none());
            assert_eq!(f.scanned, f.buf.len());
        }
        f.push(b"\n");
        assert_eq!(f.next_line().unwrap().unwrap().len(), 100_000);
    }

    proptest! {
        #[test]
        fn any_split_of_the_stream_yields_the_same_lines(
            lines in proptest::collection::vec("[a-z0-9{}\":,\\[\\] ]{1,40}", 1..20),
            crlf in proptest::collection::vec(any::<bool>(), 20),
            cuts in proptest::collection::vec(0usize..2000, 0..30),
        ) {
            let mut stream = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                stream.extend_from_slice(l.as_bytes());
                stream.extend_from_slice(if crlf[i] { b"\r\n" } else { b"\n" });
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort();
            let mut f = LineFramer::new(64);
            let mut got = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain(std::iter::once(stream.len())) {
                f.push(&stream[prev..c]);
                prev = c;
                got.extend(drain(&mut f));
            }
            let expected: Vec<Result<Vec<u8>, FrameError>> = lines
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| Ok(l.as_bytes().to_vec()))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
