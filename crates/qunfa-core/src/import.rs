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
    /// The line of each contact, in the same order.
    pub lines: Vec<u64>,
    pub rejected: Vec<Rejection>,
}

/// Parses a whole import file. NDJSON is parsed on up to `threads` threads
/// (lines are independent); CSV on one (a quoted field may hold a newline).
pub fn parse_parallel(format: ImportFormat, data: &[u8], threads: usize) -> ParsedImport {
    if format == ImportFormat::Csv || threads <= 1 || data.len() < (1 << 20) {
        return parse(format, data);
    }
    // Split at line boundaries into `threads` pieces of about equal size.
    let mut pieces = Vec::with_capacity(threads);
    let mut start = 0;
    for i in 1..=threads {
        let target = (data.len() * i / threads).max(start);
        let end = if i == threads {
            data.len()
        } else {
            data[target..].iter().position(|b| *b == b'\n').map_or(data.len(), |p| target + p + 1)
        };
        pieces.push((start, end));
        start = end;
    }
    let line_offsets: Vec<u64> = {
        let mut offsets = Vec::with_capacity(pieces.len());
        let mut lines = 0u64;
        for &(s, e) in &pieces {
            offsets.push(lines);
            lines += data[s..e].iter().filter(|b| **b == b'\n').count() as u64;
        }
        offsets
    };
    let parts: Vec<ParsedImport> = std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .iter()
            .zip(&line_offsets)
            .map(|(&(s, e), &offset)| scope.spawn(move || parse_ndjson_from(&data[s..e], offset)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    // Merge in order; a duplicate across pieces is reported like one within a piece.
    let mut out = ParsedImport::default();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut duplicates = Vec::new();
    for (i, c) in parts.iter().flat_map(|p| p.contacts.iter()).enumerate() {
        if !seen.insert(c.external_id.as_str()) {
            duplicates.push(i);
        }
    }
    let mut rejected: Vec<Rejection> = parts.iter().flat_map(|p| p.rejected.iter().cloned()).collect();
    let mut contacts = Vec::with_capacity(parts.iter().map(|p| p.contacts.len()).sum());
    let mut lines = Vec::with_capacity(contacts.capacity());
    let mut dup = duplicates.iter().peekable();
    for (i, (c, line)) in parts.into_iter().flat_map(|p| p.contacts.into_iter().zip(p.lines)).enumerate() {
        if dup.peek() == Some(&&i) {
            dup.next();
            rejected.push(Rejection {
                line,
                code: Code::Duplicate,
                message: format!("external_id {:?} appears earlier in the file", c.external_id.as_str()),
            });
        } else {
            contacts.push(c);
            lines.push(line);
        }
    }
    rejected.sort_by_key(|r| r.line);
    out.contacts = contacts;
    out.lines = lines;
    out.rejected = rejected;
    out
}

/// Parses a whole import file on the calling thread.
pub fn parse(format: ImportFormat, data: &[u8]) -> ParsedImport {
    let mut out = match format {
        ImportFormat::Ndjson => parse_ndjson_from(data, 0),
        ImportFormat::Csv => parse_csv(data),
    };
    if out.contacts.len() > MAX_IMPORT_ROWS {
        out.rejected.push(Rejection {
            line: MAX_IMPORT_ROWS as u64 + 1,
            code: Code::PayloadTooLarge,
            message: format!("at most {MAX_IMPORT_ROWS} contacts per import"),
        });
        out.contacts.truncate(MAX_IMPORT_ROWS);
        out.lines.truncate(MAX_IMPORT_ROWS);
    }
    out
}

/// Receives chunks of valid contacts; returns `false` to stop receiving.
pub type ChunkSink<'a> = dyn FnMut(Vec<ContactInput>) -> bool + 'a;

struct Collector<'a> {
    out: ParsedImport,
    seen: rustc_hash::FxHashSet<String>,
    sink: Option<(&'a mut ChunkSink<'a>, usize)>,
    accepting: bool,
}

impl<'a> Collector<'a> {
    fn new() -> Self {
        Self { out: ParsedImport::default(), seen: Default::default(), sink: None, accepting: true }
    }
    fn with_sink(sink: &'a mut ChunkSink<'a>, chunk_size: usize) -> Self {
        Self { sink: Some((sink, chunk_size.max(1))), ..Self::new() }
    }
    /// Hands the contacts collected so far to the sink, if there is one.
    fn flush(&mut self) {
        if let Some((sink, _)) = &mut self.sink {
            let chunk = std::mem::take(&mut self.out.contacts);
            self.out.lines.clear();
            if self.accepting && !chunk.is_empty() {
                self.accepting = sink(chunk);
            }
        }
    }
    fn push(&mut self, line: u64, raw: RawContact) {
        match ContactInput::parse(raw) {
            Ok(contact) => {
                if self.seen.insert(contact.external_id.as_str().to_owned()) {
                    self.out.contacts.push(contact);
                    self.out.lines.push(line);
                    if self.sink.as_ref().is_some_and(|(_, size)| self.out.contacts.len() >= *size) {
                        self.flush();
                    }
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

fn parse_ndjson_from(data: &[u8], first_line: u64) -> ParsedImport {
    let mut c = Collector::new();
    parse_ndjson_into(data, first_line, &mut c);
    c.out
}

fn parse_ndjson_into(data: &[u8], first_line: u64, c: &mut Collector<'_>) {
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let line_no = first_line + i as u64 + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<RawContact>(line) {
            Ok(raw) => c.push(line_no, raw),
            Err(e) => c.reject(line_no, Code::BadJson, format!("column {}: {e}", e.column())),
        }
    }
}

/// Known CSV columns; every other column is a profile attribute.
const CSV_FIELDS: [&str; 8] = ["external_id", "name", "email", "phone", "webhook", "wecom_userid", "tags", "consent"];

fn parse_csv(data: &[u8]) -> ParsedImport {
    let mut c = Collector::new();
    parse_csv_into(data, &mut c);
    c.out
}

fn parse_csv_into(data: &[u8], c: &mut Collector<'_>) {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(data);
    let headers = match reader.headers() {
        Ok(h) => h.iter().map(|h| h.trim().to_owned()).collect::<Vec<_>>(),
        Err(e) => {
            c.reject(1, Code::ImportFormat, format!("the header line is not valid CSV: {e}"));
            return;
        }
    };
    if !headers.iter().any(|h| h == "external_id") {
        c.reject(1, Code::ImportFormat, "the header line has no external_id column".into());
        return;
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
}

/// Parses a file on the calling thread, handing valid contacts to `sink` in
/// chunks of `chunk_size` as soon as each is full, so that storing can start
/// before parsing ends. Returns every rejected line (of the whole file, even
/// after `sink` stopped accepting).
pub fn parse_chunked<'a>(
    format: ImportFormat,
    data: &[u8],
    chunk_size: usize,
    sink: &'a mut ChunkSink<'a>,
) -> Vec<Rejection> {
    let mut c = Collector::with_sink(sink, chunk_size);
    match format {
        ImportFormat::Ndjson => parse_ndjson_into(data, 0, &mut c),
        ImportFormat::Csv => parse_csv_into(data, &mut c),
    }
    c.flush();
    c.out.rejected
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
    fn chunked_parse_matches_whole() {
        let data: String = (0..10_000)
            .map(|i| if i % 1000 == 7 { "{bad\n".to_owned() } else { format!("{{\"external_id\":\"u{i}\"}}\n") })
            .collect();
        let whole = parse(ImportFormat::Ndjson, data.as_bytes());
        let mut chunks: Vec<Vec<ContactInput>> = Vec::new();
        let mut sink = |chunk: Vec<ContactInput>| {
            chunks.push(chunk);
            true
        };
        let rejected = parse_chunked(ImportFormat::Ndjson, data.as_bytes(), 3000, &mut sink);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [3000, 3000, 3000, 990]);
        assert_eq!(chunks.concat(), whole.contacts);
        assert_eq!(rejected, whole.rejected);
        // A sink that stops early still gets every rejection reported.
        let mut calls = 0;
        let mut stop = |_chunk: Vec<ContactInput>| {
            calls += 1;
            false
        };
        let rejected = parse_chunked(ImportFormat::Ndjson, data.as_bytes(), 3000, &mut stop);
        assert_eq!((calls, rejected.len()), (1, 10));
    }

    #[test]
    fn parallel_parse_matches_sequential() {
        let mut data = String::new();
        for i in 0..40_000 {
            match i % 997 {
                0 => data.push_str("{broken\n"),
                1 => data.push_str("{\"external_id\":\"u5\"}\n"),
                2 => data.push('\n'),
                _ => data.push_str(&format!(
                    "{{\"external_id\":\"u{i}\",\"name\":\"名{i}\",\"attributes\":{{\"n\":{i}}}}}\n"
                )),
            }
        }
        let seq = parse(ImportFormat::Ndjson, data.as_bytes());
        for threads in [2, 3, 7] {
            let par = parse_parallel(ImportFormat::Ndjson, data.as_bytes(), threads);
            assert_eq!(par.contacts, seq.contacts);
            assert_eq!(par.lines, seq.lines);
            assert_eq!(par.rejected, seq.rejected);
        }
        assert!(seq.rejected.iter().any(|r| r.code == Code::Duplicate));
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
