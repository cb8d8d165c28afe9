//! Just enough HTTP/1.1 for the bench's origin and client: heads, Content-Length and chunked
//! bodies read into a reusable buffer and discarded (the bench counts bytes, it keeps none).

use std::io::{self, Read};

/// A message head.
#[derive(Debug, Default)]
pub struct Head {
    /// Request line or status line.
    pub first: String,
    /// Content-Length, if given.
    pub length: Option<u64>,
    /// Transfer-Encoding: chunked.
    pub chunked: bool,
    /// Connection: close.
    pub close: bool,
}

impl Head {
    /// The status code of a response head (0 if unparsable).
    pub fn status(&self) -> u16 {
        self.first
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// A buffered reader over a byte stream.
pub struct Reader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
}

impl<R: Read> Reader<R> {
    /// Wraps `inner` with a 64 KiB buffer.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0u8; 64 * 1024].into_boxed_slice(),
            pos: 0,
            end: 0,
        }
    }

    /// Reads more after compacting; returns how many bytes came (0 at end of stream).
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            return Err(bad("line or head longer than the buffer"));
        }
        let n = self.inner.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// A head; `None` on a clean end of stream before its first byte.
    pub fn head(&mut self) -> io::Result<Option<Head>> {
        let at = loop {
            if let Some(i) = self.buf[self.pos..self.end]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                break self.pos + i;
            }
            if self.fill()? == 0 {
                if self.pos == self.end {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let text = String::from_utf8_lossy(&self.buf[self.pos..at]).into_owned();
        self.pos = at + 4;
        let mut lines = text.split("\r\n");
        let mut head = Head {
            first: lines.next().unwrap_or("").to_owned(),
            ..Head::default()
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    head.length = Some(value.parse().map_err(|_| bad("bad Content-Length"))?)
                }
                "transfer-encoding" => head.chunked = value.contains("chunked"),
                "connection" => head.close = value.contains("close"),
                _ => {}
            }
        }
        Ok(Some(head))
    }

    /// Consumes `n` bytes, discarding them.
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            if self.pos == self.end && self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = (self.end - self.pos).min(usize::try_from(n).unwrap_or(usize::MAX));
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    /// One CRLF-terminated line.
    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf[self.pos..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads and discards the body `head` announces; returns its length. A response without
    /// length or chunking runs to the end of the stream (`to_eof`).
    pub fn body(&mut self, head: &Head, to_eof: bool) -> io::Result<u64> {
        if head.chunked {
            let mut total = 0;
            loop {
                let line = self.line()?;
                let size = line.split(';').next().unwrap_or("").trim();
                let n = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
                if n == 0 {
                    // Trailers up to the empty line.
                    while !self.line()?.is_empty() {}
                    return Ok(total);
                }
                self.skip(n)?;
                if !self.line()?.is_empty() {
                    return Err(bad("chunk not followed by CRLF"));
                }
                total += n;
            }
        }
        if let Some(n) = head.length {
            self.skip(n)?;
            return Ok(n);
        }
        if !to_eof {
            return Ok(0);
        }
        let mut total = (self.end - self.pos) as u64;
        self.pos = self.end;
        loop {
            match self.fill()? {
                0 => return Ok(total),
                n => {
                    total += n as u64;
                    self.pos = self.end;
                }
            }
        }
    }
}
