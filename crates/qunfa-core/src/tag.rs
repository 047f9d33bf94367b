//! Tag paths: `客户等级/金牌/华东`, one to three levels.

use crate::Code;

/// Maximum nesting of tags (WeCom's three levels).
pub const MAX_TAG_DEPTH: usize = 3;
const MAX_SEGMENT_CHARS: usize = 32;

/// A parsed tag path. Segments are trimmed, non-empty, ≤32 characters, without
/// `/` or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagPath(String);

impl TagPath {
    /// # Errors
    /// `QF-TAG-TOO-DEEP` for more than three levels, `QF-INVALID-TAG-PATH` for
    /// empty or over-long segments.
    pub fn parse(s: &str) -> Result<Self, Code> {
        let segments: Vec<&str> = s.split('/').map(str::trim).collect();
        if segments
            .iter()
            .any(|seg| seg.is_empty() || seg.chars().count() > MAX_SEGMENT_CHARS || seg.chars().any(char::is_control))
        {
            return Err(Code::InvalidTagPath);
        }
        if segments.len() > MAX_TAG_DEPTH {
            return Err(Code::TagTooDeep);
        }
        Ok(TagPath(segments.join("/")))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }
    /// The path of the parent tag, if this is nested.
    pub fn parent(&self) -> Option<TagPath> {
        self.0.rsplit_once('/').map(|(p, _)| TagPath(p.to_owned()))
    }
    /// This path and all its ancestors, root first.
    pub fn ancestors_and_self(&self) -> Vec<TagPath> {
        let mut out = Vec::new();
        let mut current = Some(self.clone());
        while let Some(path) = current {
            current = path.parent();
            out.push(path);
        }
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_paths() {
        assert_eq!(TagPath::parse(" 客户等级 / 金牌 ").unwrap().as_str(), "客户等级/金牌");
        assert_eq!(TagPath::parse("a/b/c/d"), Err(Code::TagTooDeep));
        assert_eq!(TagPath::parse("a//b"), Err(Code::InvalidTagPath));
        assert_eq!(TagPath::parse(""), Err(Code::InvalidTagPath));
        assert_eq!(TagPath::parse(&"长".repeat(33)), Err(Code::InvalidTagPath));
        let p = TagPath::parse("a/b/c").unwrap();
        assert_eq!(p.depth(), 3);
        let chain: Vec<_> = p.ancestors_and_self().into_iter().map(|p| p.0).collect();
        assert_eq!(chain, ["a", "a/b", "a/b/c"]);
    }
}
