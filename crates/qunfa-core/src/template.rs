//! Message templates: text with `{{variable}}` and `{{variable|default}}`
//! placeholders, rendered per recipient.
//!
//! `{{{{` writes a literal `{{`. Variable names are `name`, `external_id` or a
//! profile attribute key. A variable a contact does not have renders as its
//! default, or as nothing.

use crate::Code;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Variable { name: String, default: Option<String> },
}

/// Built-in variables every contact has.
pub const BUILTIN_VARIABLES: [&str; 2] = ["name", "external_id"];

impl Template {
    /// # Errors
    /// `QF-TEMPLATE-SYNTAX` for an unclosed or empty placeholder, or a variable
    /// name with characters outside letters, digits and `_`.
    pub fn parse(text: &str) -> Result<Self, Code> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            literal.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            if let Some(stripped) = after.strip_prefix("{{") {
                literal.push_str("{{");
                rest = stripped;
                continue;
            }
            let end = after.find("}}").ok_or(Code::TemplateSyntax)?;
            let inner = &after[..end];
            let (name, default) = match inner.split_once('|') {
                Some((n, d)) => (n.trim(), Some(d.to_owned())),
                None => (inner.trim(), None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(Code::TemplateSyntax);
            }
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(Segment::Variable { name: name.to_owned(), default });
            rest = &after[end + 2..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Self { segments })
    }

    /// Whether rendering depends on the recipient.
    pub fn has_variables(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Variable { .. }))
    }

    /// Variable names used, in order of first use.
    pub fn variables(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in &self.segments {
            if let Segment::Variable { name, .. } = s {
                if !out.contains(&name.as_str()) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Variables that are neither built in nor in `known_attributes`.
    pub fn unknown_variables<'a>(&'a self, known_attributes: &dyn Fn(&str) -> bool) -> Vec<&'a str> {
        self.variables().into_iter().filter(|v| !BUILTIN_VARIABLES.contains(v) && !known_attributes(v)).collect()
    }

    /// Renders with `lookup` giving each variable's value for one recipient.
    pub fn render(&self, lookup: &dyn Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Variable { name, default } => match lookup(name) {
                    Some(v) if !v.is_empty() => out.push_str(&v),
                    _ => out.push_str(default.as_deref().unwrap_or("")),
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str) -> String {
        let t = Template::parse(text).unwrap();
        t.render(&|v| match v {
            "name" => Some("张三".into()),
            "city" => Some("上海".into()),
            _ => None,
        })
    }

    #[test]
    fn renders() {
        assert_eq!(render("{{name}}您好，{{ city }}门店见"), "张三您好，上海门店见");
        assert_eq!(render("亲爱的{{level|会员}}"), "亲爱的会员");
        assert_eq!(render("literal {{{{name}}"), "literal {{name}}");
        assert_eq!(render("no vars"), "no vars");
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(Template::parse("hi {{name"), Err(Code::TemplateSyntax));
        assert_eq!(Template::parse("hi {{}}"), Err(Code::TemplateSyntax));
        assert_eq!(Template::parse("hi {{a b}}"), Err(Code::TemplateSyntax));
    }

    #[test]
    fn unknown_variables() {
        let t = Template::parse("{{name}} {{city}} {{shoe_size}} {{city}}").unwrap();
        assert_eq!(t.variables(), ["name", "city", "shoe_size"]);
        assert_eq!(t.unknown_variables(&|k| k == "city"), ["shoe_size"]);
    }
}
