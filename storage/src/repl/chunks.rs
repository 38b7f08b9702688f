//! Chunks of a volume: the dirty-chunk set ([`ChunkBits`], one bit per chunk) and reading or
//! hashing whole chunks of a device.
//!
//! Invariant: memory is one bit per chunk of the volume, whatever was written; a write marks
//! every chunk it touches (never fewer).
//!
//! Does not: decide when chunks are shipped (see [`super::resync`]).

use super::proto::Hash;
use crate::device::{BlockDevice, DeviceResult};

/// Number of chunks of `chunk` bytes covering `size` bytes (the last one may be short).
pub fn chunk_count(size: u64, chunk: u32) -> u64 {
    size.div_ceil(u64::from(chunk.max(1)))
}

/// Byte range `(offset, len)` of chunk `index` in a volume of `size` bytes.
pub fn chunk_span(index: u64, size: u64, chunk: u32) -> (u64, u64) {
    let start = index.saturating_mul(u64::from(chunk));
    let end = start.saturating_add(u64::from(chunk)).min(size);
    (start, end.saturating_sub(start))
}

/// A set of chunk indices of one volume, one bit per chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkBits {
    words: Vec<u64>,
    chunks: u64,
    count: u64,
}

impl ChunkBits {
    /// The empty set over `chunks` chunks.
    pub fn new(chunks: u64) -> Self {
        Self {
            words: vec![0; chunks.div_ceil(64) as usize],
            chunks,
            count: 0,
        }
    }

    /// Every chunk.
    pub fn all(chunks: u64) -> Self {
        let mut bits = Self::new(chunks);
        for i in 0..chunks {
            bits.insert(i);
        }
        bits
    }

    pub fn insert(&mut self, index: u64) {
        debug_assert!(index < self.chunks, "chunk {index} of {}", self.chunks);
        let Some(word) = self.words.get_mut((index / 64) as usize) else {
            return;
        };
        let bit = 1u64 << (index % 64);
        if *word & bit == 0 {
            *word |= bit;
            self.count += 1;
        }
    }

    pub fn contains(&self, index: u64) -> bool {
        self.words
            .get((index / 64) as usize)
            .is_some_and(|w| w & (1u64 << (index % 64)) != 0)
    }

    /// Marks every chunk that bytes `offset..offset+len` touch.
    pub fn insert_bytes(&mut self, offset: u64, len: u64, chunk: u32) {
        if len == 0 {
            return;
        }
        let chunk = u64::from(chunk.max(1));
        let first = offset / chunk;
        let last = (offset.saturating_add(len) - 1) / chunk;
        for i in first..=last.min(self.chunks.saturating_sub(1)) {
            self.insert(i);
        }
    }

    pub fn union_with(&mut self, other: &ChunkBits) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
        self.count = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Moves the whole set out, leaving this one empty.
    pub fn take(&mut self) -> ChunkBits {
        std::mem::replace(self, ChunkBits::new(self.chunks))
    }

    /// Removes and returns up to `n` of the lowest indices.
    pub fn pop_first(&mut self, n: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for (w, word) in self.words.iter_mut().enumerate() {
            while *word != 0 && (out.len() as u64) < n {
                let bit = word.trailing_zeros();
                *word &= !(1u64 << bit);
                out.push(w as u64 * 64 + u64::from(bit));
            }
            if out.len() as u64 >= n {
                break;
            }
        }
        self.count -= out.len() as u64;
        out
    }

    /// Bytes of memory this set holds (for the bounded-memory test).
    pub fn memory_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

/// Reads chunks `indices` of `disk` in full.
pub async fn read_chunks(
    disk: &dyn BlockDevice,
    chunk: u32,
    indices: &[u64],
) -> DeviceResult<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::with_capacity(indices.len());
    for &i in indices {
        let (offset, len) = chunk_span(i, disk.size(), chunk);
        out.push((i, disk.read(offset, len as u32).await?));
    }
    Ok(out)
}

/// BLAKE3 hashes of chunks `indices` of `disk`, in order.
pub async fn hash_chunks(
    disk: &dyn BlockDevice,
    chunk: u32,
    indices: &[u64],
) -> DeviceResult<Vec<Hash>> {
    let mut out = Vec::with_capacity(indices.len());
    for &i in indices {
        let (offset, len) = chunk_span(i, disk.size(), chunk);
        let data = disk.read(offset, len as u32).await?;
        out.push(*blake3::hash(&data).as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_mark_every_chunk_they_touch_and_pop_in_order() {
        let mut bits = ChunkBits::new(200);
        bits.insert_bytes(4095, 2, 4096); // straddles chunks 0 and 1
        bits.insert_bytes(130 * 4096, 4096, 4096);
        bits.insert_bytes(0, 0, 4096); // nothing
        assert_eq!(bits.count(), 3);
        assert!(bits.contains(0) && bits.contains(1) && bits.contains(130));
        assert_eq!(bits.pop_first(2), vec![0, 1]);
        assert_eq!(bits.pop_first(9), vec![130]);
        assert!(bits.is_empty());
        let all = ChunkBits::all(70);
        assert_eq!(all.count(), 70);
        let mut u = ChunkBits::new(70);
        u.insert(3);
        u.union_with(&all);
        assert_eq!(u.count(), 70);
    }

    #[test]
    fn the_last_chunk_may_be_short() {
        assert_eq!(chunk_count(10_000, 4096), 3);
        assert_eq!(chunk_span(2, 10_000, 4096), (8192, 10_000 - 8192));
    }
}
