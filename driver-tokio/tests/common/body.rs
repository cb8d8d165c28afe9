//! Test bodies: deterministic patterns and a streaming digest to check them with.

/// The body of the quick large-body check.
pub const BIG: usize = 16 * 1024 * 1024;

/// The body the issue asks for, each way.
pub const HUGE: usize = 100 * 1024 * 1024;

/// Unit the 100 MiB bodies are generated and written in.
pub const BLOCK: usize = 1024 * 1024;

pub fn byte(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// FNV-1a over 8-byte little-endian words (the last one zero-padded) and the length: cheap
/// enough for 100 MiB in a debug build, and position dependent, so reordering is caught.
#[derive(Default)]
pub struct Digest {
    h: u64,
    len: u64,
    partial: Vec<u8>,
}

impl Digest {
    pub fn new() -> Self {
        Self {
            h: 0xcbf2_9ce4_8422_2325,
            ..Self::default()
        }
    }

    fn word(&mut self, w: [u8; 8]) {
        self.h = (self.h ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (8 - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < 8 {
                return;
            }
            let w: [u8; 8] = self.partial[..].try_into().expect("8 bytes");
            self.partial.clear();
            self.word(w);
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(w.try_into().expect("8 bytes"));
        }
        self.partial.extend_from_slice(words.remainder());
    }

    /// `digest/len`, as the origin's `/sum` answers.
    pub fn finish(mut self) -> String {
        if !self.partial.is_empty() {
            let mut w = [0u8; 8];
            w[..self.partial.len()].copy_from_slice(&self.partial);
            self.word(w);
        }
        format!("{:016x}/{}", self.h, self.len)
    }
}

pub fn digest(data: &[u8]) -> String {
    let mut d = Digest::new();
    d.update(data);
    d.finish()
}

/// Word `k` of the 100 MiB pattern (splitmix64).
pub fn word(k: u64) -> [u8; 8] {
    let mut z = k.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).to_le_bytes()
}

/// Bytes `[8 * first_word, ...)` of the pattern, `words` words long.
pub fn pattern(first_word: u64, words: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(words * 8);
    for k in 0..words as u64 {
        out.extend_from_slice(&word(first_word + k));
    }
    out
}

/// xorshift64*: test data that differs per connection.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}
