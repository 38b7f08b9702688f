//! The demo's record log on a block volume reached over NBD, the way QEMU reaches a disk.
//!
//! Layout: bytes `0..4096` are reserved and never written. Record `i` is the 16-byte slot at
//! `4096 + 16 i`: sequence number (u64 LE), magic `FRL1`, FNV-1a checksum (u32 LE) of the slot
//! index and sequence number. The log is the slots from 0 up to the first one that does not
//! validate (zeroes, garbage, a slot left from another layout); a fresh all-zero volume is an
//! empty log. A slot never straddles a 512-byte sector, so a torn write cannot half-validate.
//!
//! Invariants:
//! - an append is one NBD WRITE of one slot with FUA, and it is acknowledged only after the
//!   server's reply: an acknowledged record is durable on the volume;
//! - appends are serialised (one lock), so slot `i + 1` is written only after slot `i` is
//!   confirmed and the log never has a gap below an acknowledged record;
//! - a broken connection is replaced (the server may have moved to another host of the site,
//!   even to another copy of the volume) and the log rescanned before the next write. A write
//!   whose reply was lost is confirmed by finding it at the end of the log (then flushed), else
//!   written again; when no attempt is confirmed the append fails and is not acknowledged. A
//!   record whose confirmation was lost may still be on the volume: it is listed, but was never
//!   acknowledged, so nobody counts on it.
//!
//! Does not: share the volume between writers (the fabric's fencing keeps one instance per
//! service serving), compact, or grow the volume: a full log refuses appends.

use std::time::Duration;

use storage::nbd::{NbdClient, NbdError, NbdUri};
use tokio::sync::Mutex;

/// Where the first slot starts.
pub const LOG_START: u64 = 4096;
/// Bytes per record.
pub const SLOT: usize = 16;
const MAGIC: [u8; 4] = *b"FRL1";
/// Bytes read per request while scanning.
const SCAN_CHUNK: u64 = 64 * 1024;
/// Tries per operation (each reconnects if the connection broke) and the pause between them.
const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);
/// Bound on each NBD call, so a hung server turns into an error, not a hung request.
const NBD_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("append of seq {seq} not confirmed durable on {uri}: {source}")]
    Unconfirmed {
        seq: u64,
        uri: String,
        source: NbdError,
    },
    #[error("reading the record log on {uri}: {source}")]
    Read { uri: String, source: NbdError },
    #[error("the record log on {uri} is full ({capacity} records)")]
    Full { uri: String, capacity: u64 },
}

fn checksum(index: u64, seq: u64) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in index.to_le_bytes().into_iter().chain(seq.to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The bytes of slot `index` holding `seq`.
pub fn encode_slot(index: u64, seq: u64) -> [u8; SLOT] {
    let mut out = [0; SLOT];
    out[..8].copy_from_slice(&seq.to_le_bytes());
    out[8..12].copy_from_slice(&MAGIC);
    out[12..].copy_from_slice(&checksum(index, seq).to_le_bytes());
    out
}

/// The sequence number in slot `index`, if the slot validates.
pub fn decode_slot(index: u64, bytes: &[u8]) -> Option<u64> {
    let seq = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let magic = bytes.get(8..12)?;
    let sum = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?);
    (magic == MAGIC && sum == checksum(index, seq)).then_some(seq)
}

/// Byte offset of slot `index`.
pub fn slot_offset(index: u64) -> u64 {
    LOG_START + index * SLOT as u64
}

/// How many slots a volume of `size` bytes holds.
pub fn capacity(size: u64) -> u64 {
    size.saturating_sub(LOG_START) / SLOT as u64
}

/// Decodes the valid slots of `chunk`, whose first slot is `first`; `true` when the log ended
/// inside it.
pub fn decode_chunk(first: u64, chunk: &[u8], into: &mut Vec<u64>) -> bool {
    for (i, slot) in chunk.chunks_exact(SLOT).enumerate() {
        match decode_slot(first + i as u64, slot) {
            Some(seq) => into.push(seq),
            None => return true,
        }
    }
    false
}

#[derive(Debug, Default)]
struct LogState {
    client: Option<NbdClient>,
    /// The first free slot and the volume's capacity in slots, once a scan has found them.
    end: Option<(u64, u64)>,
}

/// The record log on the export `uri` names.
#[derive(Debug)]
pub struct NbdLog {
    uri: NbdUri,
    state: Mutex<LogState>,
}

impl NbdLog {
    /// A log on `uri`; nothing is connected until the first call.
    pub fn new(uri: NbdUri) -> Self {
        Self {
            uri,
            state: Mutex::new(LogState::default()),
        }
    }

    pub fn uri(&self) -> &NbdUri {
        &self.uri
    }

    /// Appends `seq`; `Ok` means it is durable on the volume.
    pub async fn append(&self, seq: u64) -> Result<(), LogError> {
        let mut st = self.state.lock().await;
        // The slot of an earlier attempt whose confirmation was lost, if any.
        let mut attempted: Option<u64> = None;
        let outcome = self
            .retrying(&mut st, async move |client, end| {
                let (at, capacity) = match *end {
                    Some(known) => known,
                    None => {
                        let (seqs, capacity) = scan(client).await?;
                        let at = seqs.len() as u64;
                        *end = Some((at, capacity));
                        if attempted.is_some_and(|slot| slot + 1 == at) && seqs.last() == Some(&seq)
                        {
                            // It landed before the connection broke; make sure it is durable.
                            client.flush().await?;
                            return Ok(Appended::Yes);
                        }
                        (at, capacity)
                    }
                };
                if at >= capacity {
                    return Ok(Appended::Full(capacity));
                }
                attempted = Some(at);
                client
                    .write(slot_offset(at), &encode_slot(at, seq), true)
                    .await?;
                *end = Some((at + 1, capacity));
                Ok(Appended::Yes)
            })
            .await
            .map_err(|source| LogError::Unconfirmed {
                seq,
                uri: self.uri.to_string(),
                source,
            })?;
        match outcome {
            Appended::Yes => Ok(()),
            Appended::Full(capacity) => Err(LogError::Full {
                uri: self.uri.to_string(),
                capacity,
            }),
        }
    }

    /// Every record on the volume, in slot order.
    pub async fn list(&self) -> Result<Vec<u64>, LogError> {
        let mut st = self.state.lock().await;
        self.retrying(&mut st, async |client, end| {
            let (seqs, capacity) = scan(client).await?;
            *end = Some((seqs.len() as u64, capacity));
            Ok(seqs)
        })
        .await
        .map_err(|source| LogError::Read {
            uri: self.uri.to_string(),
            source,
        })
    }

    /// Runs `op` on a connected client and the known end of the log, reconnecting and retrying
    /// when the connection breaks. A new connection forgets the end, so `op` scans again: the
    /// server may now serve another copy of the volume. An NBD error reply (EIO, EPERM, ...) is
    /// not retried.
    async fn retrying<T>(
        &self,
        st: &mut LogState,
        mut op: impl AsyncFnMut(&mut NbdClient, &mut Option<(u64, u64)>) -> Result<T, NbdError>,
    ) -> Result<T, NbdError> {
        let mut attempt = 1;
        loop {
            let LogState { client, end } = &mut *st;
            let result = match client.as_mut() {
                Some(c) => op(c, end).await,
                None => match NbdClient::connect_uri(&self.uri, NBD_TIMEOUT).await {
                    Ok(c) => {
                        *end = None;
                        op(client.insert(c), end).await
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_connection() => {
                    (st.client, st.end) = (None, None);
                    if attempt >= ATTEMPTS {
                        return Err(e);
                    }
                    tracing::warn!(uri = %self.uri, attempt, "record log: reconnecting: {e}");
                    tokio::time::sleep(BACKOFF * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// What an append came to, short of a connection failure.
enum Appended {
    Yes,
    Full(u64),
}

/// Reads slots from the start until one does not validate: the records and the capacity.
async fn scan(client: &mut NbdClient) -> Result<(Vec<u64>, u64), NbdError> {
    let capacity = capacity(client.size());
    let mut seqs = Vec::new();
    let per_chunk = SCAN_CHUNK / SLOT as u64;
    let mut first = 0;
    while first < capacity {
        let count = per_chunk.min(capacity - first);
        let len = u32::try_from(count * SLOT as u64).unwrap_or(u32::MAX);
        let chunk = client.read(slot_offset(first), len).await?;
        if decode_chunk(first, &chunk, &mut seqs) {
            break;
        }
        first += count;
    }
    Ok((seqs, capacity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_validates_only_at_its_own_index_and_intact() {
        let slot = encode_slot(5, 42);
        assert_eq!(decode_slot(5, &slot), Some(42));
        assert_eq!(decode_slot(6, &slot), None, "a slot copied elsewhere");
        assert_eq!(decode_slot(0, &[0; SLOT]), None, "a fresh volume");
        for byte in 0..SLOT {
            let mut bad = slot;
            bad[byte] ^= 0x40;
            assert_eq!(decode_slot(5, &bad), None, "flipped byte {byte}");
        }
        assert_eq!(decode_slot(5, &slot[..10]), None);
    }

    #[test]
    fn the_log_ends_at_the_first_invalid_slot() {
        let mut chunk = Vec::new();
        for (i, seq) in [7u64, 3, 9].into_iter().enumerate() {
            chunk.extend_from_slice(&encode_slot(10 + i as u64, seq));
        }
        chunk.extend_from_slice(&[0; SLOT]);
        // A stale record past the end is not part of the log.
        chunk.extend_from_slice(&encode_slot(14, 1));
        let mut seqs = vec![1];
        assert!(decode_chunk(10, &chunk, &mut seqs));
        assert_eq!(seqs, [1, 7, 3, 9]);
        let mut all = Vec::new();
        assert!(!decode_chunk(10, &chunk[..3 * SLOT], &mut all));
        assert_eq!(all, [7, 3, 9]);
    }

    #[test]
    fn slots_are_sector_aligned_and_capacity_excludes_the_reserved_block() {
        assert_eq!(slot_offset(0), 4096);
        assert_eq!(512 % SLOT, 0);
        assert_eq!(capacity(4096 + 64), 4);
        assert_eq!(capacity(100), 0);
    }
}
