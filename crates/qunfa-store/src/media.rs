//! Uploaded media (images, files), stored by content hash per workspace.

use qunfa_core::message::MediaId;

use crate::{audit, params, Store, StoreError};

/// An upload to store.
#[derive(Debug, Clone, Copy)]
pub struct MediaUpload<'a> {
    pub bytes: &'a [u8],
    pub content_type: &'a str,
    pub filename: Option<&'a str>,
    /// Perceptual hash, for images (counted for repeated images).
    pub image_hash: Option<u64>,
}

impl Store {
    /// The perceptual hash of an uploaded image (for repetition counting).
    ///
    /// # Errors
    /// Database errors.
    pub fn media_image_hash(&self, workspace_id: i64, id: &str) -> Result<Option<u64>, StoreError> {
        self.db.read(|c| {
            Ok(c.query_opt(
                "SELECT image_hash FROM media WHERE workspace_id = ? AND id = ?",
                params![workspace_id, id],
            )?
            .and_then(|r| r.opt_i64(0))
            .map(|h| h as u64))
        })
    }

    /// Stores bytes under their SHA-256; uploading the same bytes twice is a no-op.
    ///
    /// # Errors
    /// Database errors.
    pub fn put_media(
        &self,
        workspace_id: i64,
        upload: MediaUpload<'_>,
        actor: &str,
        now: i64,
    ) -> Result<MediaId, StoreError> {
        let MediaUpload { bytes, content_type, filename, image_hash } = upload;
        let id = MediaId::of(bytes);
        self.db.write(|c| {
            let n = c.execute(
                "INSERT INTO media (workspace_id, id, content_type, filename, size, bytes, created_at, image_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT DO NOTHING",
                params![workspace_id, id.as_str(), content_type, filename, bytes.len(), bytes.to_vec(), now, image_hash.map(|h| h as i64)],
            )?;
            if n == 1 {
                audit::append(c, workspace_id, actor, "media.uploaded", &format!("media:{}", id.as_str()), &serde_json::json!({"size": bytes.len(), "content_type": content_type}).to_string(), now)?;
            }
            Ok(())
        })?;
        Ok(id)
    }

    /// Content type and bytes of a media item.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn media(&self, workspace_id: i64, id: &MediaId) -> Result<(String, Vec<u8>), StoreError> {
        let r = self.db.conn()?.query_one(
            "SELECT content_type, bytes FROM media WHERE workspace_id = ? AND id = ?",
            params![workspace_id, id.as_str()],
        )?;
        Ok((r.string(0), r.blob(1).to_vec()))
    }

    /// Whether a media item exists in the workspace.
    ///
    /// # Errors
    /// Database errors.
    pub fn media_exists(&self, workspace_id: i64, id: &MediaId) -> Result<bool, StoreError> {
        Ok(self
            .db
            .conn()?
            .query_opt("SELECT 1 FROM media WHERE workspace_id = ? AND id = ?", params![workspace_id, id.as_str()])?
            .is_some())
    }
}
