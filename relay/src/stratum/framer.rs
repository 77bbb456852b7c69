//! Splits a TCP byte stream into Stratum lines.
//!
//! Stratum V1 is newline-delimited JSON. Bytes arrive in arbitrary pieces, so the framer keeps
//! the unfinished tail and remembers how far it has already searched, so a line that trickles in
//! one byte at a time is scanned once, not once per byte. A line longer than the limit is an
//! error; the framer then discards up to the next newline so one bad line costs one error, not
//! the connection's sync.
//!
//! [`LineFramer::feed`] is the hot path: a read almost always holds whole lines (one submit, one
//! answer), and those are handed out as slices of the read buffer itself. Only an unfinished
//! tail is copied and kept, so the common case allocates and copies nothing.

use bytes::{Buf, BytesMut};
use std::ops::ControlFlow;

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

    /// Hands `on_line` each line completed by `data`, as [`LineFramer::push`] followed by
    /// [`LineFramer::next_line`] until `None` would, but lines that lie whole in `data` are lent
    /// straight from it. When `on_line` breaks, the bytes after that line stay buffered.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut on_line: impl FnMut(Result<&[u8], FrameError>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut rest = data;
        if !self.buf.is_empty() || self.discarding {
            // Finish the buffered line (or the discarded one) the slow way.
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                self.push(rest);
                return self.drain_into(&mut on_line);
            };
            self.push(&rest[..=nl]);
            rest = &rest[nl + 1..];
            if self.drain_into(&mut on_line).is_break() {
                self.push(rest);
                return ControlFlow::Break(());
            }
        }
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let raw = &rest[..nl];
            rest = &rest[nl + 1..];
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            let item = if line.len() > self.max_line {
                Err(FrameError::LineTooLong {
                    max: self.max_line,
                    seen: line.len(),
                })
            } else if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            } else {
                Ok(line)
            };
            if on_line(item).is_break() {
                self.push(rest);
                return ControlFlow::Break(());
            }
        }
        if rest.is_empty() {
            return ControlFlow::Continue(());
        }
        // An unfinished tail: kept, and refused here already if it is too long.
        self.push(rest);
        self.drain_into(&mut on_line)
    }

    fn drain_into(
        &mut self,
        on_line: &mut impl FnMut(Result<&[u8], FrameError>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        while let Some(item) = self.next_line() {
            match item {
                Ok(line) => on_line(Ok(&line))?,
                Err(e) => on_line(Err(e))?,
            }
        }
        ControlFlow::Continue(())
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
    memchr::memchr(b'\n', b)
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

    fn feed_all(f: &mut LineFramer, data: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = vec![];
        let flow = f.feed(data, |r| {
            out.push(r.map(<[u8]>::to_vec));
            ControlFlow::Continue(())
        });
        assert!(flow.is_continue());
        out
    }

    #[test]
    fn feed_lends_whole_lines_and_keeps_the_tail() {
        let mut f = LineFramer::new(100);
        assert_eq!(
            feed_all(&mut f, b"a\r\nb\n\n  \r\nc"),
            vec![Ok(b"a".to_vec()), Ok(b"b".to_vec())]
        );
        assert_eq!(f.buffered(), 1);
        assert_eq!(
            feed_all(&mut f, b"d\ne\n"),
            vec![Ok(b"cd".to_vec()), Ok(b"e".to_vec())]
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn a_break_leaves_the_following_lines_buffered() {
        let mut f = LineFramer::new(100);
        let mut seen = vec![];
        let flow = f.feed(b"one\ntwo\nthr", |r| {
            seen.push(r.map(<[u8]>::to_vec));
            ControlFlow::Break(())
        });
        assert!(flow.is_break());
        assert_eq!(seen, vec![Ok(b"one".to_vec())]);
        f.push(b"ee\n");
        assert_eq!(
            drain(&mut f),
            vec![Ok(b"two".to_vec()), Ok(b"three".to_vec())]
        );
    }

    #[test]
    fn feed_refuses_an_oversized_tail_at_once_and_resyncs() {
        let mut f = LineFramer::new(4);
        assert_eq!(
            feed_all(&mut f, b"ok\n123456"),
            vec![
                Ok(b"ok".to_vec()),
                Err(FrameError::LineTooLong { max: 4, seen: 6 })
            ]
        );
        assert_eq!(feed_all(&mut f, b"789\nxy\n"), vec![Ok(b"xy".to_vec())]);
    }

    proptest! {
        /// `feed` and `push` + `next_line` agree on any byte stream cut anywhere, oversized
        /// lines, CRs and blank lines included.
        #[test]
        fn feed_agrees_with_push_and_next_line(
            stream in proptest::collection::vec(prop_oneof![
                Just(b'a'), Just(b'b'), Just(b' '), Just(b'\r'), Just(b'\n')
            ], 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..20),
            max in 1usize..12,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort();
            let (mut fed, mut pushed) = (LineFramer::new(max), LineFramer::new(max));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut prev = 0;
            for c in cuts.into_iter().chain(std::iter::once(stream.len())) {
                a.extend(feed_all(&mut fed, &stream[prev..c]));
                pushed.push(&stream[prev..c]);
                b.extend(drain(&mut pushed));
                prev = c;
            }
            prop_assert_eq!(a, b);
            prop_assert_eq!(fed.buffered(), pushed.buffered());
        }

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
