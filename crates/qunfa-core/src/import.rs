//! Parsing of contact import files: NDJSON (one JSON contact per line) and CSV
//! (a header line; known columns plus one column per attribute).
//!
//! Parsing is total: every line either becomes a [`ContactInput`] or a
//! [`Rejection`] with its 1-based line number, so a caller can refuse the whole
//! file and report every broken line at once.

use std::collections::{BTreeMap, HashSet};

use crate::{
    contact::{ContactInput, RawChannels, RawContact},
    Code,
};

/// Most contacts in one import file.
pub const MAX_IMPORT_ROWS: usize = 5_000_000;

/// A line that could not be imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub line: u64,
    pub code: Code,
    pub message: String,
}

/// The format of an import file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Csv,
    Ndjson,
}

impl ImportFormat {
    /// Guesses the format from a file name or content type.
    pub fn detect(name_or_content_type: &str) -> Option<Self> {
        let s = name_or_content_type.to_ascii_lowercase();
        if s.ends_with(".csv") || s.contains("text/csv") {
            Some(Self::Csv)
        } else if s.ends_with(".ndjson")
            || s.ends_with(".jsonl")
            || s.contains("ndjson")
            || s.contains("jsonl")
            || s.contains("application/json")
        {
            Some(Self::Ndjson)
        } else {
            None
        }
    }
}

/// The outcome of parsing a file.
#[derive(Debug, Default)]
pub struct ParsedImport {
    pub contacts: Vec<ContactInput>,
    pub rejected: Vec<Rejection>,
}

/// Parses a whole import file.
pub fn parse(format: ImportFormat, data: &[u8]) -> ParsedImport {
    let mut out = match format {
        ImportFormat::Ndjson => parse_ndjson(data),
        ImportFormat::Csv => parse_csv(data),
    };
    if out.contacts.len() > MAX_IMPORT_ROWS {
        out.rejected.push(Rejection {
            line: MAX_IMPORT_ROWS as u64 + 1,
            code: Code::PayloadTooLarge,
            message: format!("at most {MAX_IMPORT_ROWS} contacts per import"),
        });
        out.contacts.truncate(MAX_IMPORT_ROWS);
    }
    out
}

struct Collector {
    out: ParsedImport,
    seen: HashSet<String>,
}

impl Collector {
    fn new() -> Self {
        Self { out: ParsedImport::default(), seen: HashSet::new() }
    }
    fn push(&mut self, line: u64, raw: RawContact) {
        match ContactInput::parse(raw) {
            Ok(contact) => {
                if self.seen.insert(contact.external_id.as_str().to_owned()) {
                    self.out.contacts.push(contact);
                } else {
                    self.reject(
                        line,
                        Code::Duplicate,
                        format!("external_id {:?} appears earlier in the file", contact.external_id.as_str()),
                    );
                }
            }
            Err(e) => {
                let message = format!("{}: {}", e.field, e.code.message_en());
                self.reject(line, e.code, message);
            }
        }
    }
    fn reject(&mut self, line: u64, code: Code, message: String) {
        self.out.rejected.push(Rejection { line, code, message });
    }
}

fn parse_ndjson(data: &[u8]) -> ParsedImport {
    let mut c = Collector::new();
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<RawContact>(line) {
            Ok(raw) => c.push(line_no, raw),
            Err(e) => c.reject(line_no, Code::BadJson, format!("column {}: {e}", e.column())),
        }
    }
    c.out
}

/// Known CSV columns; every other column is a profile attribute.
const CSV_FIELDS: [&str; 8] = ["external_id", "name", "email", "phone", "webhook", "wecom_userid", "tags", "consent"];

fn parse_csv(data: &[u8]) -> ParsedImport {
    let mut c = Collector::new();
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(data);
    let headers = match reader.headers() {
        Ok(h) => h.iter().map(|h| h.trim().to_owned()).collect::<Vec<_>>(),
        Err(e) => {
            c.reject(1, Code::ImportFormat, format!("the header line is not valid CSV: {e}"));
            return c.out;
        }
    };
    if !headers.iter().any(|h| h == "external_id") {
        c.reject(1, Code::ImportFormat, "the header line has no external_id column".into());
        return c.out;
    }
    let mut record = csv::StringRecord::new();
    loop {
        let line_no = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                if record.iter().all(|f| f.trim().is_empty()) {
                    continue;
                }
                let raw = csv_row(&headers, &record);
                c.push(line_no, raw);
            }
            Err(e) => {
                let line = e.position().map_or(line_no, |p| p.line());
                c.reject(line, Code::ImportFormat, format!("not valid CSV: {e}"));
                // A broken record may leave the reader mid-line; keep going with the next one.
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
            }
        }
    }
    c.out
}

fn csv_row(headers: &[String], record: &csv::StringRecord) -> RawContact {
    let mut raw = RawContact { channels: RawChannels::default(), attributes: BTreeMap::new(), ..Default::default() };
    for (header, value) in headers.iter().zip(record.iter()) {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let owned = Some(value.to_owned());
        match header.as_str() {
            "external_id" => raw.external_id = owned,
            "name" => raw.name = owned,
            "email" => raw.channels.email = owned,
            "phone" => raw.channels.phone = owned,
            "webhook" => raw.channels.webhook = owned,
            "wecom_userid" => raw.channels.wecom_userid = owned,
            "tags" => raw.tags = split_list(value),
            "consent" => raw.consent = split_list(value).into_iter().map(|ch| (ch, true)).collect(),
            key => {
                debug_assert!(!CSV_FIELDS.contains(&key));
                raw.attributes.insert(key.to_owned(), csv_attribute(value));
            }
        }
    }
    raw
}

fn split_list(value: &str) -> Vec<String> {
    value.split(['|', ';']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// CSV cells are text; plain decimal numbers and true/false become typed values
/// so that audience ranges work on imported data.
fn csv_attribute(value: &str) -> serde_json::Value {
    let numeric = value.bytes().enumerate().all(|(i, b)| b.is_ascii_digit() || b == b'.' || (i == 0 && b == b'-'))
        && value.bytes().any(|b| b.is_ascii_digit())
        && !(value.len() > 1 && value.starts_with('0') && !value.starts_with("0."));
    if numeric {
        if let Some(n) = value.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            return serde_json::Value::Number(n);
        }
    }
    match value {
        "true" => serde_json::Value::Bool(true),
        "false" => serde_json::Value::Bool(false),
        _ => serde_json::Value::String(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::AttrValue;

    #[test]
    fn ndjson_reports_every_broken_line() {
        let data = b"{\"external_id\":\"a\",\"name\":\"A\"}\n\n{broken\n{\"external_id\":\"b\",\"channels\":{\"email\":\"x\"}}\n{\"external_id\":\"a\"}\n{\"external_id\":\"c\",\"bogus\":1}\n";
        let out = parse(ImportFormat::Ndjson, data);
        assert_eq!(out.contacts.len(), 1);
        let lines: Vec<_> = out.rejected.iter().map(|r| (r.line, r.code)).collect();
        assert_eq!(lines, [(3, Code::BadJson), (4, Code::InvalidEmail), (5, Code::Duplicate), (6, Code::BadJson)]);
    }

    #[test]
    fn csv_columns_and_attributes() {
        let data = "external_id,name,email,tags,consent,city,spend,zip\n\
                    u1,张三,zs@example.com,客户等级/金牌|华东,inbox|email,上海,5000,0210\n\
                    u2,李四,,,,北京,12.5,\n\
                    ,nobody,,,,,,\n"
            .as_bytes();
        let out = parse(ImportFormat::Csv, data);
        assert_eq!(out.contacts.len(), 2, "{:?}", out.rejected);
        let u1 = &out.contacts[0];
        assert_eq!(u1.tags.len(), 2);
        assert_eq!(u1.attributes["spend"], AttrValue::Number(5000.0));
        assert_eq!(u1.attributes["zip"], AttrValue::Text("0210".into()));
        assert_eq!(u1.consent.len(), 2);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!((out.rejected[0].line, out.rejected[0].code), (4, Code::InvalidExternalId));
    }

    #[test]
    fn csv_without_external_id_column() {
        let out = parse(ImportFormat::Csv, b"name\nx\n");
        assert_eq!(out.rejected[0].code, Code::ImportFormat);
    }

    #[test]
    fn csv_wrong_field_count() {
        let out = parse(ImportFormat::Csv, b"external_id,name\na,b\nc,d,e\nf,g\n");
        assert_eq!(out.contacts.len(), 2);
        assert_eq!((out.rejected[0].line, out.rejected[0].code), (3, Code::ImportFormat));
    }
}
