//! Audiences: which contacts a broadcast goes to.
//!
//! An audience is a set of dense contact ids, held as a roaring bitmap. At
//! dispatch the audience is frozen: the bitmap is serialized and stored with the
//! broadcast, so what was sent to whom can be replayed exactly, and the
//! delivery batches are slices of it by rank.

pub use croaring::Bitmap;

/// A bitmap in the portable roaring format (the one every roaring library
/// reads), as stored for membership chunks and frozen audiences.
pub fn encode(bitmap: &Bitmap) -> Vec<u8> {
    bitmap.serialize::<croaring::Portable>()
}

/// Reads a bitmap in the portable roaring format, checking that it is well
/// formed (`None` when it is not).
pub fn decode(bytes: &[u8]) -> Option<Bitmap> {
    Bitmap::try_deserialize::<croaring::Portable>(bytes)
}

pub mod expr;
pub mod index;

/// The bitmap of the ids whose bits are set in `words` (bit `i % 64` of word
/// `i / 64`), built in the portable format and read back: each 65,536-id
/// chunk becomes an array of its ids or a copy of its words, whichever the
/// format calls for, without adding ids one at a time.
pub fn from_words(words: &[u64]) -> Bitmap {
    const WORDS_PER_CHUNK: usize = 1024;
    const MAX_ARRAY: u32 = 4096;
    const COOKIE_NO_RUNS: u32 = 12346;
    let chunks: Vec<(u16, u32, &[u64])> = words
        .chunks(WORDS_PER_CHUNK)
        .enumerate()
        .filter_map(|(key, chunk)| {
            let card: u32 = chunk.iter().map(|w| w.count_ones()).sum();
            (card > 0).then_some((key as u16, card, chunk))
        })
        .collect();
    if chunks.is_empty() {
        return Bitmap::new();
    }
    let payload: usize =
        chunks.iter().map(|(_, card, _)| if *card > MAX_ARRAY { 8192 } else { *card as usize * 2 }).sum();
    let header = 8 + chunks.len() * 8;
    let mut out = Vec::with_capacity(header + payload);
    out.extend_from_slice(&COOKIE_NO_RUNS.to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for (key, card, _) in &chunks {
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&((card - 1) as u16).to_le_bytes());
    }
    let mut offset = header;
    for (_, card, _) in &chunks {
        out.extend_from_slice(&(offset as u32).to_le_bytes());
        offset += if *card > MAX_ARRAY { 8192 } else { *card as usize * 2 };
    }
    for (_, card, chunk) in &chunks {
        if *card > MAX_ARRAY {
            for w in chunk.iter().copied().chain(std::iter::repeat(0)).take(WORDS_PER_CHUNK) {
                out.extend_from_slice(&w.to_le_bytes());
            }
        } else {
            for (i, w) in chunk.iter().enumerate() {
                let mut w = *w;
                while w != 0 {
                    let low = (i * 64) as u16 + w.trailing_zeros() as u16;
                    out.extend_from_slice(&low.to_le_bytes());
                    w &= w - 1;
                }
            }
        }
    }
    decode(&out).expect("a well-formed portable bitmap")
}

/// How a send names its audience. Tags and departments include their subtrees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudienceSpec {
    /// Every live contact of the workspace.
    All,
    /// Explicitly picked contacts (dense ids).
    Contacts(Vec<u32>),
    /// One tag with its descendants.
    Tag(i64),
    /// The union of several tags with their descendants.
    Tags(Vec<i64>),
    /// One department with its sub-departments.
    Department(i64),
    /// An audience expression (see [`expr`]), evaluated when the send is
    /// checked and again when it is dispatched.
    Expression(String),
    /// Exactly the audience broadcast N was dispatched to (its frozen
    /// bitmap), never resolved again: a correction notice goes to the very
    /// recipients of the message it corrects.
    Frozen(i64),
}

/// Most recipients in one delivery batch (WeChat's API batch size).
pub const BATCH_SIZE: usize = 2000;

/// A frozen audience: a bitmap, and its members in order for batch slicing.
#[derive(Debug, Clone)]
pub struct FrozenAudience {
    members: Vec<u32>,
    batch_size: usize,
}

/// A stored audience that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("the frozen audience is corrupt: {0}")]
pub struct CorruptAudience(String);

impl FrozenAudience {
    pub fn from_bitmap(bitmap: &Bitmap) -> Self {
        Self { members: bitmap.to_vec(), batch_size: BATCH_SIZE }
    }

    /// Slices into batches of `size` (1 to [`BATCH_SIZE`]) instead: a send
    /// that goes out in waves has smaller batches.
    pub fn with_batch_size(mut self, size: Option<usize>) -> Self {
        self.batch_size = size.unwrap_or(BATCH_SIZE).clamp(1, BATCH_SIZE);
        self
    }

    /// The batch size in use.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Serializes a bitmap in the portable roaring format.
    pub fn serialize(bitmap: &Bitmap) -> Vec<u8> {
        encode(bitmap)
    }

    /// Decodes a stored audience.
    ///
    /// # Errors
    /// When the bytes are not a roaring bitmap.
    pub fn deserialize(bytes: &[u8]) -> Result<Self, CorruptAudience> {
        let bitmap = decode(bytes)
            .ok_or_else(|| CorruptAudience(format!("{} bytes that are not a roaring bitmap", bytes.len())))?;
        Ok(Self::from_bitmap(&bitmap))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of batches (of at most [`BATCH_SIZE`], or the size set).
    pub fn n_batches(&self) -> usize {
        self.members.len().div_ceil(self.batch_size)
    }

    /// The members of batch `batch_no` (empty past the end).
    pub fn batch(&self, batch_no: usize) -> &[u32] {
        let start = (batch_no * self.batch_size).min(self.members.len());
        let end = (start + self.batch_size).min(self.members.len());
        &self.members[start..end]
    }

    /// The batch that holds contact `idx`, if it is a member.
    pub fn batch_of(&self, idx: u32) -> Option<usize> {
        self.members.binary_search(&idx).ok().map(|rank| rank / self.batch_size)
    }

    pub fn members(&self) -> &[u32] {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_from_words_match_the_bits() {
        let mut words = vec![0u64; 5000];
        // An empty chunk, a sparse one, a dense one, a partial last one.
        for i in (65_536..131_072u32).step_by(97) {
            words[i as usize / 64] |= 1 << (i % 64);
        }
        for i in (131_072..196_608u32).filter(|i| i % 3 != 0) {
            words[i as usize / 64] |= 1 << (i % 64);
        }
        for i in [262_144u32, 319_999] {
            words[i as usize / 64] |= 1 << (i % 64);
        }
        let b = from_words(&words);
        let want: Vec<u32> = (0..320_000u32).filter(|i| words[*i as usize / 64] >> (i % 64) & 1 == 1).collect();
        assert_eq!(b.to_vec(), want);
        assert!(from_words(&[]).is_empty());
        assert!(from_words(&[0, 0]).is_empty());
    }

    #[test]
    fn batches_cover_every_member_once() {
        let bitmap: Bitmap = (0..4_500u32).map(|i| i * 3).collect();
        let bytes = FrozenAudience::serialize(&bitmap);
        let frozen = FrozenAudience::deserialize(&bytes).unwrap();
        assert_eq!(frozen.n_batches(), 3);
        let all: Vec<u32> = (0..frozen.n_batches()).flat_map(|b| frozen.batch(b).to_vec()).collect();
        assert_eq!(all, bitmap.iter().collect::<Vec<_>>());
        assert!(frozen.batch(3).is_empty());
        assert!(FrozenAudience::deserialize(b"junk").is_err());
    }
}
