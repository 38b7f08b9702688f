//! Replication wire messages: what a primary sends to a replica ([`ToReplica`]) and what comes
//! back ([`FromReplica`]), encoded with postcard.
//!
//! Invariant: every request carries the volume name and the sender's epoch (the fencing token);
//! a replica checks both before anything else. Encoding refuses a message above the configured
//! maximum, and decoding refuses a frame above it, so neither side allocates without bound.
//!
//! Does not: frame messages on a stream (the WAN does), or decide anything (see
//! [`super::primary`] and [`super::replica`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Log sequence number of one write on the primary; the first write is 1.
pub type Lsn = u64;
/// BLAKE3 hash of one chunk.
pub type Hash = [u8; 32];

/// Bytes an [`Op`] costs beyond its data, in a message or a journal (a safe upper bound of
/// postcard's variant tag and varints).
pub const OP_OVERHEAD: u64 = 32;
/// Bytes a message costs beyond its ops or chunks (tag, volume name, epoch, LSN), an upper
/// bound given volume names of at most [`MAX_VOLUME_NAME`] bytes.
pub const MESSAGE_OVERHEAD: u64 = 512;
/// Longest volume name a message may carry.
pub const MAX_VOLUME_NAME: usize = 256;

/// One write as it is replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `data` at `offset`.
    Write { offset: u64, data: Vec<u8> },
    /// `len` zero bytes at `offset` (NBD WRITE_ZEROES and TRIM).
    Zeroes { offset: u64, len: u64 },
}

impl Op {
    pub fn offset(&self) -> u64 {
        match self {
            Op::Write { offset, .. } | Op::Zeroes { offset, .. } => *offset,
        }
    }

    /// Bytes of the volume this op covers.
    pub fn len(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64,
            Op::Zeroes { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes this op costs on the wire and in a journal.
    pub fn wire_bytes(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64 + OP_OVERHEAD,
            Op::Zeroes { .. } => OP_OVERHEAD,
        }
    }
}

/// A set of chunk indices as sorted, disjoint half-open ranges (compact for "every chunk").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSet {
    pub ranges: Vec<(u64, u64)>,
}

impl ChunkSet {
    /// Builds the set from ascending indices.
    pub fn from_sorted(indices: &[u64]) -> Self {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &i in indices {
            match ranges.last_mut() {
                Some((_, end)) if *end == i => *end = i + 1,
                _ => ranges.push((i, i + 1)),
            }
        }
        Self { ranges }
    }

    /// The indices, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|&(a, b)| a..b)
    }

    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|&(a, b)| b.saturating_sub(a)).sum()
    }
}

/// Primary → replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToReplica {
    /// Opens a session; `primary` identifies this run of the primary, so a replica reports its
    /// stream position only to the run that set it.
    Hello {
        volume: String,
        epoch: u64,
        primary: u64,
        size: u64,
        chunk: u32,
    },
    /// The replica now holds everything below `next_lsn`; writes stream from there.
    StartStream {
        volume: String,
        epoch: u64,
        primary: u64,
        next_lsn: Lsn,
    },
    /// Ops with consecutive LSNs from `first_lsn`.
    Writes {
        volume: String,
        epoch: u64,
        first_lsn: Lsn,
        ops: Vec<Op>,
    },
    /// Asks for the BLAKE3 hash of each chunk in `chunks`.
    HashRequest {
        volume: String,
        epoch: u64,
        chunks: ChunkSet,
    },
    /// Whole chunks (the last chunk of a volume may be short) to store as they are.
    Resync {
        volume: String,
        epoch: u64,
        chunks: Vec<(u64, Vec<u8>)>,
    },
}

impl ToReplica {
    pub fn volume(&self) -> &str {
        match self {
            ToReplica::Hello { volume, .. }
            | ToReplica::StartStream { volume, .. }
            | ToReplica::Writes { volume, .. }
            | ToReplica::HashRequest { volume, .. }
            | ToReplica::Resync { volume, .. } => volume,
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            ToReplica::Hello { epoch, .. }
            | ToReplica::StartStream { epoch, .. }
            | ToReplica::Writes { epoch, .. }
            | ToReplica::HashRequest { epoch, .. }
            | ToReplica::Resync { epoch, .. } => *epoch,
        }
    }
}

/// Replica → primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromReplica {
    /// Answer to `Hello`: where this primary run's stream stands on the replica, if it has one.
    Welcome { epoch: u64, next_lsn: Option<Lsn> },
    /// Everything up to `lsn` is durable on the replica.
    Ack { lsn: Lsn },
    /// Hashes in the order of the request's chunks.
    Hashes { hashes: Vec<Hash> },
    /// The `Resync` chunks are durable.
    Stored { chunks: u64 },
    /// Nothing of the request was applied (except persisting a newer epoch).
    Refused { reason: Refusal, epoch_seen: u64 },
}

/// Why a replica refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("epoch {got} is older than the newest seen")]
    StaleEpoch { got: u64 },
    #[error("request for volume {got:?}, this copy is of {have:?}")]
    WrongVolume { got: String, have: String },
    #[error(
        "primary has {size} bytes in {chunk}-byte chunks, this copy {have_size} in {have_chunk}"
    )]
    Geometry {
        size: u64,
        chunk: u32,
        have_size: u64,
        have_chunk: u32,
    },
    #[error("writes from LSN {got}, expected {expected:?} (None: no stream open)")]
    Gap { expected: Option<Lsn>, got: Lsn },
    #[error("op at {offset} length {len} reaches beyond the volume's {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("chunk {index} is outside the volume or has the wrong length {len}")]
    BadChunk { index: u64, len: u64 },
    #[error("replica I/O failed: {0}")]
    Io(String),
}

/// A message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("encoding a replication message: {0}")]
    Encode(postcard::Error),
    #[error("decoding a replication message: {0}")]
    Decode(postcard::Error),
}

/// Encodes `msg`, refusing more than `max` bytes.
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, ProtoError> {
    let bytes = postcard::to_stdvec(msg).map_err(ProtoError::Encode)?;
    if bytes.len() > max {
        return Err(ProtoError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

/// Decodes a frame of at most `max` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, ProtoError> {
    if bytes.len() > max {
        return Err(ProtoError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    postcard::from_bytes(bytes).map_err(ProtoError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_batch_encodes_within_the_bound_the_core_plans_with() {
        // 63 ops of 64 KiB plus overheads is what a 4 MiB batch may hold.
        let ops: Vec<Op> = (0..63)
            .map(|i| Op::Write {
                offset: u64::MAX - i,
                data: vec![0xab; 65536],
            })
            .collect();
        let planned: u64 = MESSAGE_OVERHEAD + ops.iter().map(Op::wire_bytes).sum::<u64>();
        let msg = ToReplica::Writes {
            volume: "v".repeat(MAX_VOLUME_NAME),
            epoch: u64::MAX,
            first_lsn: u64::MAX,
            ops,
        };
        let bytes = encode(&msg, usize::MAX).expect("encode");
        assert!(bytes.len() as u64 <= planned, "{} > {planned}", bytes.len());
        let back: ToReplica = decode(&bytes, bytes.len()).expect("decode");
        assert_eq!(back, msg);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors_not_panics() {
        let msg = FromReplica::Ack { lsn: 7 };
        let bytes = encode(&msg, 64).expect("encode");
        assert!(matches!(
            decode::<FromReplica>(&bytes, 1),
            Err(ProtoError::TooLarge { .. })
        ));
        assert!(matches!(
            encode(
                &ToReplica::Resync {
                    volume: "v".into(),
                    epoch: 1,
                    chunks: vec![(0, vec![0; 100])]
                },
                50
            ),
            Err(ProtoError::TooLarge { .. })
        ));
        for garbage in [&[0xff_u8; 9][..], &[7, 1, 2], &[]] {
            assert!(decode::<ToReplica>(garbage, 1024).is_err());
        }
    }

    #[test]
    fn chunk_sets_are_compact_ranges() {
        let set = ChunkSet::from_sorted(&[1, 2, 3, 7, 9, 10]);
        assert_eq!(set.ranges, vec![(1, 4), (7, 8), (9, 11)]);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![1, 2, 3, 7, 9, 10]);
        assert_eq!(set.count(), 6);
    }
}
