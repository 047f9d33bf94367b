//! Audiences: which contacts a broadcast goes to.
//!
//! An audience is a set of dense contact ids, held as a roaring bitmap. At
//! dispatch the audience is frozen: the bitmap is serialized and stored with the
//! broadcast, so what was sent to whom can be replayed exactly, and the
//! delivery batches are slices of it by rank.

use roaring::RoaringBitmap;

pub use roaring;

pub mod expr;
pub mod index;

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
}

/// Most recipients in one delivery batch (WeChat's API batch size).
pub const BATCH_SIZE: usize = 2000;

/// A frozen audience: a bitmap, and its members in order for batch slicing.
#[derive(Debug, Clone)]
pub struct FrozenAudience {
    members: Vec<u32>,
}

/// A stored audience that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("the frozen audience is corrupt: {0}")]
pub struct CorruptAudience(String);

impl FrozenAudience {
    pub fn from_bitmap(bitmap: &RoaringBitmap) -> Self {
        Self { members: bitmap.iter().collect() }
    }

    /// Serializes a bitmap in the portable roaring format.
    pub fn serialize(bitmap: &RoaringBitmap) -> Vec<u8> {
        let mut out = Vec::with_capacity(bitmap.serialized_size());
        bitmap.serialize_into(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Decodes a stored audience.
    ///
    /// # Errors
    /// When the bytes are not a roaring bitmap.
    pub fn deserialize(bytes: &[u8]) -> Result<Self, CorruptAudience> {
        let bitmap = RoaringBitmap::deserialize_from(bytes).map_err(|e| CorruptAudience(e.to_string()))?;
        Ok(Self::from_bitmap(&bitmap))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of batches of at most [`BATCH_SIZE`].
    pub fn n_batches(&self) -> usize {
        self.members.len().div_ceil(BATCH_SIZE)
    }

    /// The members of batch `batch_no` (empty past the end).
    pub fn batch(&self, batch_no: usize) -> &[u32] {
        let start = (batch_no * BATCH_SIZE).min(self.members.len());
        let end = (start + BATCH_SIZE).min(self.members.len());
        &self.members[start..end]
    }

    pub fn members(&self) -> &[u32] {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_member_once() {
        let bitmap: RoaringBitmap = (0..4_500u32).map(|i| i * 3).collect();
        let bytes = FrozenAudience::serialize(&bitmap);
        let frozen = FrozenAudience::deserialize(&bytes).unwrap();
        assert_eq!(frozen.n_batches(), 3);
        let all: Vec<u32> = (0..frozen.n_batches()).flat_map(|b| frozen.batch(b).to_vec()).collect();
        assert_eq!(all, bitmap.iter().collect::<Vec<_>>());
        assert!(frozen.batch(3).is_empty());
        assert!(FrozenAudience::deserialize(b"junk").is_err());
    }
}
