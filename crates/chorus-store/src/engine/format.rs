//! The on-disk format of the log engine: segment headers, batches and records (pure: no I/O).
//!
//! ```text
//!  segment file  <id:020>.seg
//!  ┌──────────────┬──────────────────────────────┬──────────────────────────────┬───
//!  │ segment head │ batch head │ record record … │ batch head │ record …        │ …
//!  └──────────────┴──────────────────────────────┴──────────────────────────────┴───
//!  segment head (16 B): magic "CHORUSLG" · format version u32 · crc32 of the 12 bytes before
//!  batch head   (32 B): magic u32 · crc32 of bytes 8..32 · seq u64 · segment u64 ·
//!                       payload length u32 · crc32 of the payload
//!  record             : body length u32 · crc32 of the body · body = kind u8 · shard u32 · data
//! ```
//!
//! One batch is what one group commit writes with one `write` and one `fdatasync`, so after a
//! crash only the last batch can be torn. Every batch names its segment and carries the next
//! sequence number: a stale or misplaced batch never passes for the next one. Every record
//! has its own checksum too, so an entry read back from disk later is checked again.
//! Integers are little-endian.

/// Bytes of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 16;
/// Bytes of a batch header.
pub const BATCH_HEADER_LEN: usize = 32;
/// Bytes of a record header (length and checksum).
pub const RECORD_HEADER_LEN: usize = 8;
/// Bytes of a record body before its data (kind and shard).
pub const RECORD_PREFIX_LEN: usize = 5;
/// The log format this build writes and reads.
pub const LOG_FORMAT_VERSION: u32 = 1;

const SEGMENT_MAGIC: &[u8; 8] = b"CHORUSLG";
const BATCH_MAGIC: u32 = 0x4742_4c43; // "CLBG"

/// The shard field of records that belong to no shard (checkpoints).
pub const NO_SHARD: u32 = u32::MAX;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A Raft entry (postcard of openraft's `Entry`; it starts with the `LogId`).
    Entry = 1,
    /// The shard's vote.
    Vote = 2,
    /// The shard's committed log id.
    Committed = 3,
    /// Entries after this log id are gone.
    TruncateAfter = 4,
    /// Entries up to this log id are gone.
    Purge = 5,
    /// Every shard's metadata; the first record of every segment.
    Checkpoint = 6,
    /// The shard's replica is recovering from its peers (1) or has recovered (0).
    Recovering = 7,
}

impl RecordKind {
    fn from_u8(value: u8) -> Option<RecordKind> {
        Some(match value {
            1 => RecordKind::Entry,
            2 => RecordKind::Vote,
            3 => RecordKind::Committed,
            4 => RecordKind::TruncateAfter,
            5 => RecordKind::Purge,
            6 => RecordKind::Checkpoint,
            7 => RecordKind::Recovering,
            _ => return None,
        })
    }
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The segment header of this format.
pub fn segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&LOG_FORMAT_VERSION.to_le_bytes());
    let sum = crc(&header[..12]);
    header[12..16].copy_from_slice(&sum.to_le_bytes());
    header
}

/// What a segment header says.
#[derive(Debug, PartialEq, Eq)]
pub enum SegmentHeader {
    /// This format.
    Valid,
    /// A valid header of another format version.
    OtherVersion(u32),
    /// Not a header (torn, zeros, or another file).
    Invalid,
}

/// Checks a segment header.
pub fn check_segment_header(bytes: &[u8]) -> SegmentHeader {
    if bytes.len() < SEGMENT_HEADER_LEN
        || &bytes[..8] != SEGMENT_MAGIC
        || crc(&bytes[..12]) != u32_at(bytes, 12)
    {
        return SegmentHeader::Invalid;
    }
    match u32_at(bytes, 8) {
        LOG_FORMAT_VERSION => SegmentHeader::Valid,
        other => SegmentHeader::OtherVersion(other),
    }
}

/// Appends a record (header and body) to `buf`; returns where its body starts in `buf` and
/// its length.
pub fn put_record(buf: &mut Vec<u8>, kind: RecordKind, shard: u32, data: &[u8]) -> (usize, u32) {
    let body_len = RECORD_PREFIX_LEN + data.len();
    let start = buf.len();
    buf.reserve(RECORD_HEADER_LEN + body_len);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind as u8);
    buf.extend_from_slice(&shard.to_le_bytes());
    buf.extend_from_slice(data);
    let body_at = start + RECORD_HEADER_LEN;
    let sum = crc(&buf[body_at..]);
    buf[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
    (body_at, body_len as u32)
}

/// Bytes a record with `data_len` bytes of data takes.
pub fn record_len(data_len: usize) -> usize {
    RECORD_HEADER_LEN + RECORD_PREFIX_LEN + data_len
}

/// Fills in the batch header at the start of `batch` (its first [`BATCH_HEADER_LEN`] bytes
/// are reserved for it; the records follow).
pub fn seal_batch(batch: &mut [u8], seq: u64, segment: u64) {
    let payload_len = (batch.len() - BATCH_HEADER_LEN) as u32;
    let payload_crc = crc(&batch[BATCH_HEADER_LEN..]);
    batch[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    batch[8..16].copy_from_slice(&seq.to_le_bytes());
    batch[16..24].copy_from_slice(&segment.to_le_bytes());
    batch[24..28].copy_from_slice(&payload_len.to_le_bytes());
    batch[28..32].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc(&batch[8..32]);
    batch[4..8].copy_from_slice(&header_crc.to_le_bytes());
}

/// A batch found intact in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAt {
    /// Its sequence number.
    pub seq: u64,
    /// Offset of its payload in the segment.
    pub payload_at: usize,
    /// Length of its payload.
    pub payload_len: usize,
}

impl BatchAt {
    /// Offset just past the batch.
    pub fn end(&self) -> usize {
        self.payload_at + self.payload_len
    }
}

/// Reads the batch at `at` of a segment's bytes if it is intact and belongs to `segment`.
pub fn read_batch(bytes: &[u8], at: usize, segment: u64) -> Option<BatchAt> {
    let header = bytes.get(at..at + BATCH_HEADER_LEN)?;
    if u32_at(header, 0) != BATCH_MAGIC || crc(&header[8..32]) != u32_at(header, 4) {
        return None;
    }
    if u64_at(header, 16) != segment {
        return None;
    }
    let payload_at = at + BATCH_HEADER_LEN;
    let payload_len = u32_at(header, 24) as usize;
    let payload = bytes.get(payload_at..payload_at + payload_len)?;
    if crc(payload) != u32_at(header, 28) {
        return None;
    }
    Some(BatchAt {
        seq: u64_at(header, 8),
        payload_at,
        payload_len,
    })
}

/// Looks for any intact batch of `segment` starting after `from` with a sequence number above
/// `after_seq`. Used after a bad batch: one found means the damage is not a torn tail.
pub fn find_later_batch(bytes: &[u8], from: usize, segment: u64, after_seq: Option<u64>) -> Option<usize> {
    let magic = BATCH_MAGIC.to_le_bytes();
    let mut at = from;
    while at + BATCH_HEADER_LEN <= bytes.len() {
        let window = &bytes[at..];
        let found = window.windows(4).position(|w| w == magic)?;
        let candidate = at + found;
        if let Some(batch) = read_batch(bytes, candidate, segment)
            && after_seq.is_none_or(|seq| batch.seq > seq)
        {
            return Some(candidate);
        }
        at = candidate + 1;
    }
    None
}

/// One record of a batch's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// What it is.
    pub kind: RecordKind,
    /// Its shard ([`NO_SHARD`] for checkpoints).
    pub shard: u32,
    /// Its data.
    pub data: &'a [u8],
    /// Offset of its body within the bytes it was read from.
    pub body_at: usize,
    /// Length of its body.
    pub body_len: u32,
}

/// Why a record did not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes end inside the record.
    #[error("record cut short at byte {at}")]
    Short {
        /// Where.
        at: usize,
    },
    /// The checksum does not match the body.
    #[error("record checksum mismatch at byte {at}")]
    Checksum {
        /// Where.
        at: usize,
    },
    /// The kind byte is unknown.
    #[error("unknown record kind {kind} at byte {at}")]
    Kind {
        /// The byte.
        kind: u8,
        /// Where.
        at: usize,
    },
}

/// Reads the record at `at` of `bytes`.
pub fn read_record(bytes: &[u8], at: usize) -> Result<RecordRef<'_>, RecordError> {
    let header = bytes
        .get(at..at + RECORD_HEADER_LEN)
        .ok_or(RecordError::Short { at })?;
    let body_len = u32_at(header, 0) as usize;
    let body_at = at + RECORD_HEADER_LEN;
    let body = bytes
        .get(body_at..body_at + body_len)
        .filter(|b| b.len() >= RECORD_PREFIX_LEN)
        .ok_or(RecordError::Short { at })?;
    if crc(body) != u32_at(header, 4) {
        return Err(RecordError::Checksum { at });
    }
    read_body(body, body_at).map_err(|kind| RecordError::Kind { kind, at })
}

/// Reads a record's body (checked by the caller).
fn read_body(body: &[u8], body_at: usize) -> Result<RecordRef<'_>, u8> {
    let kind = RecordKind::from_u8(body[0]).ok_or(body[0])?;
    Ok(RecordRef {
        kind,
        shard: u32_at(body, 1),
        data: &body[RECORD_PREFIX_LEN..],
        body_at,
        body_len: body.len() as u32,
    })
}

/// Reads a record's body given its stored checksum's position: `record` is the whole
/// record, header included (how an entry is read back from disk).
pub fn read_record_exact(record: &[u8]) -> Result<RecordRef<'_>, RecordError> {
    let parsed = read_record(record, 0)?;
    if RECORD_HEADER_LEN + parsed.body_len as usize != record.len() {
        return Err(RecordError::Short { at: 0 });
    }
    Ok(parsed)
}

/// Iterates over the records of a batch payload, stopping at the first bad one.
pub fn records(payload: &[u8], base: usize) -> impl Iterator<Item = Result<RecordRef<'_>, RecordError>> {
    let mut at = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= payload.len() {
            return None;
        }
        match read_record(payload, at) {
            Ok(mut record) => {
                at = record.body_at + record.body_len as usize;
                record.body_at += base;
                Some(Ok(record))
            }
            Err(e) => {
                failed = true;
                Some(Err(shift(e, base)))
            }
        }
    })
}

fn shift(err: RecordError, base: usize) -> RecordError {
    match err {
        RecordError::Short { at } => RecordError::Short { at: at + base },
        RecordError::Checksum { at } => RecordError::Checksum { at: at + base },
        RecordError::Kind { kind, at } => RecordError::Kind { kind, at: at + base },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, segment: u64, records: &[(RecordKind, u32, &[u8])]) -> Vec<u8> {
        let mut buf = vec![0u8; BATCH_HEADER_LEN];
        for (kind, shard, data) in records {
            put_record(&mut buf, *kind, *shard, data);
        }
        seal_batch(&mut buf, seq, segment);
        buf
    }

    #[test]
    fn batch_and_records_round_trip() {
        let mut bytes = segment_header().to_vec();
        assert_eq!(check_segment_header(&bytes), SegmentHeader::Valid);
        let first = bytes.len();
        bytes.extend(batch(
            7,
            3,
            &[(RecordKind::Entry, 2, b"abc"), (RecordKind::Vote, 5, b"")],
        ));
        let b = read_batch(&bytes, first, 3).expect("intact");
        assert_eq!(b.seq, 7);
        let recs: Vec<_> = records(&bytes[b.payload_at..b.end()], b.payload_at)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (recs[0].kind, recs[0].shard, recs[0].data),
            (RecordKind::Entry, 2, &b"abc"[..])
        );
        assert_eq!((recs[1].kind, recs[1].shard), (RecordKind::Vote, 5));
        // A record read back by its position alone.
        let start = recs[0].body_at - RECORD_HEADER_LEN;
        let whole = &bytes[start..recs[0].body_at + recs[0].body_len as usize];
        assert_eq!(read_record_exact(whole).unwrap().data, b"abc");
    }

    #[test]
    fn a_batch_of_another_segment_or_with_a_flipped_byte_is_refused() {
        let bytes = batch(1, 9, &[(RecordKind::Entry, 0, b"payload")]);
        assert!(read_batch(&bytes, 0, 9).is_some());
        assert!(read_batch(&bytes, 0, 8).is_none(), "another segment's batch");
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x40;
            assert!(read_batch(&flipped, 0, 9).is_none(), "flip at {i} went unnoticed");
        }
        assert!(read_batch(&bytes[..bytes.len() - 1], 0, 9).is_none(), "cut short");
    }

    #[test]
    fn a_later_batch_is_found_past_garbage() {
        let mut bytes = batch(1, 1, &[(RecordKind::Entry, 0, b"one")]);
        let bad_at = bytes.len();
        let mut second = batch(2, 1, &[(RecordKind::Entry, 0, b"two")]);
        second[40] ^= 0xff; // damage the second batch
        bytes.extend(&second);
        let third_at = bytes.len();
        bytes.extend(batch(3, 1, &[(RecordKind::Entry, 0, b"three")]));
        assert!(read_batch(&bytes, bad_at, 1).is_none());
        assert_eq!(find_later_batch(&bytes, bad_at + 1, 1, Some(1)), Some(third_at));
        assert_eq!(
            find_later_batch(&bytes, bad_at + 1, 1, Some(3)),
            None,
            "not newer"
        );
        assert_eq!(find_later_batch(&bytes, third_at + 1, 1, None), None);
    }

    #[test]
    fn a_damaged_record_stops_iteration() {
        let mut payload = Vec::new();
        put_record(&mut payload, RecordKind::Entry, 0, b"good");
        let second = payload.len();
        put_record(&mut payload, RecordKind::Entry, 0, b"bad!");
        payload[second + 10] ^= 1;
        let out: Vec<_> = records(&payload, 100).collect();
        assert_eq!(out.len(), 2);
        assert!(out[0].is_ok());
        assert_eq!(out[1], Err(RecordError::Checksum { at: 100 + second }));
    }

    #[test]
    fn other_versions_and_garbage_headers_are_told_apart() {
        let mut header = segment_header();
        header[8] = 9;
        let sum = crc32fast::hash(&header[..12]);
        header[12..16].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(check_segment_header(&header), SegmentHeader::OtherVersion(9));
        assert_eq!(check_segment_header(&[0u8; 16]), SegmentHeader::Invalid);
        assert_eq!(check_segment_header(b"short"), SegmentHeader::Invalid);
    }
}
