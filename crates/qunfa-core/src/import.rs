//! Parsing of contact import files: NDJSON (one JSON contact per line) and CSV
//! (a header line; known columns plus one column per attribute).
//!
//! Parsing is total: every line either becomes a [`ContactInput`] or a
//! [`Rejection`] with its 1-based line number, so a caller can refuse the whole
//! file and report every broken line at once.

use std::{
    collections::BTreeMap,
    sync::{Condvar, Mutex},
};

use rustc_hash::FxHashMap;

use crate::{
    contact::{ContactInput, RawContact},
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

/// Contacts per chunk: the unit of parallel parsing and of hand-over to the consumer.
pub const CHUNK_LINES: usize = 8192;

/// Parses a whole import file on up to `threads` threads.
pub fn parse_parallel(format: ImportFormat, data: &[u8], threads: usize) -> ParsedImport {
    let mut out = ParsedImport::default();
    let rejected = parse_with(format, data, threads, CHUNK_LINES, &|contacts| contacts, &mut |chunk| {
        let mut skipped = chunk.skipped.iter().peekable();
        for (i, (c, line)) in chunk.prepared.into_iter().zip(chunk.lines).enumerate() {
            if skipped.next_if_eq(&&i).is_none() {
                out.contacts.push(c);
                out.lines.push(line);
            }
        }
        true
    });
    out.rejected = rejected;
    out
}

/// Parses a whole import file on the calling thread.
pub fn parse(format: ImportFormat, data: &[u8]) -> ParsedImport {
    parse_parallel(format, data, 1)
}

/// A chunk of valid contacts, in file order, as handed to the consumer of
/// [`parse_with`].
pub struct Chunk<T> {
    /// What `prepare` made of the chunk's contacts.
    pub prepared: T,
    /// The line of each contact given to `prepare`.
    pub lines: Vec<u64>,
    /// Ascending positions (among the contacts given to `prepare`) of contacts
    /// the consumer must skip: their external id appeared earlier in the
    /// file, or they are beyond [`MAX_IMPORT_ROWS`] (reported as rejections).
    pub skipped: Vec<usize>,
}

/// The parsing pipeline of an import. The file is cut at record boundaries
/// into chunks of `chunk_lines` lines; up to `threads` threads parse and
/// validate chunks and run `prepare` on each chunk's valid contacts; the
/// calling thread receives the chunks strictly in file order, finds external
/// ids seen earlier in the file, and hands each chunk to `consume`, which
/// returns `false` to stop receiving (parsing goes on, so that every rejected
/// line of the file is still reported).
///
/// Returns every rejected line, in line order. At most [`MAX_IMPORT_ROWS`]
/// contacts are accepted; the first one beyond is rejected and the rest are
/// not handed over.
///
/// External ids are compared by a 128-bit SipHash of their text: two
/// different ids would collide with probability about n²/2¹²⁹, and a
/// collision is reported as a duplicate, never lost silently.
pub fn parse_with<T: Send>(
    format: ImportFormat,
    data: &[u8],
    threads: usize,
    chunk_lines: usize,
    prepare: &(dyn Fn(Vec<ContactInput>) -> T + Sync),
    consume: &mut dyn FnMut(Chunk<T>) -> bool,
) -> Vec<Rejection> {
    pipeline(format, data, threads, chunk_lines, MAX_IMPORT_ROWS, prepare, consume)
}

/// [`parse_with`] with the row limit as a parameter.
fn pipeline<T: Send>(
    format: ImportFormat,
    data: &[u8],
    threads: usize,
    chunk_lines: usize,
    max_rows: usize,
    prepare: &(dyn Fn(Vec<ContactInput>) -> T + Sync),
    consume: &mut dyn FnMut(Chunk<T>) -> bool,
) -> Vec<Rejection> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut rejected = Vec::new();
    let (body, first_line, headers) = match format {
        ImportFormat::Ndjson => (data, 1, None),
        ImportFormat::Csv => match csv_headers(data) {
            Ok((headers, offset, lines)) => (&data[offset..], lines + 1, Some(headers)),
            Err(r) => return vec![r],
        },
    };
    let segmenter = Mutex::new(Segmenter::new(format, body, first_line));
    let threads = threads.max(1);
    let window = threads * 2 + 2;
    let board = Mutex::new(Board { ready: BTreeMap::new(), next: 0, live: threads, accepting: true });
    let (ready_cv, space_cv) = (Condvar::new(), Condvar::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let Some(segment) = lock(&segmenter).next(chunk_lines) else {
                        break;
                    };
                    let accepting = {
                        let mut b = lock(&board);
                        while segment.seq >= b.next + window {
                            b = space_cv.wait(b).unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                        b.accepting
                    };
                    let parsed = parse_segment(format, headers.as_deref(), &segment);
                    let prepared = accepting.then(|| prepare(parsed.contacts));
                    let out = Parsed {
                        prepared,
                        bytes: segment.bytes.len(),
                        lines: parsed.lines,
                        keys: parsed.keys,
                        rejected: parsed.rejected,
                    };
                    lock(&board).ready.insert(segment.seq, out);
                    ready_cv.notify_all();
                }
                lock(&board).live -= 1;
                ready_cv.notify_all();
            });
        }
        // The consumer, in file order.
        let mut seen: FxHashMap<u128, u64> = FxHashMap::default();
        let mut accepted = 0usize;
        let mut taking = true;
        loop {
            let parsed = {
                let mut b = lock(&board);
                loop {
                    let next = b.next;
                    if let Some(p) = b.ready.remove(&next) {
                        b.next += 1;
                        break Some(p);
                    }
                    if b.live == 0 {
                        break None;
                    }
                    b = ready_cv.wait(b).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            space_cv.notify_all();
            let Some(parsed) = parsed else { break };
            if seen.is_empty() && !parsed.keys.is_empty() {
                // Size the table once from the first chunk's density, not by doubling.
                seen.reserve(body.len() / parsed.bytes.max(1) * parsed.keys.len() + parsed.keys.len());
            }
            rejected.extend(parsed.rejected);
            let mut duplicates = Vec::new();
            for (i, (key, line)) in parsed.keys.iter().zip(&parsed.lines).enumerate() {
                if let Some(first) = seen.get(key) {
                    duplicates.push(i);
                    rejected.push(Rejection {
                        line: *line,
                        code: Code::Duplicate,
                        message: format!("external_id appears earlier in the file, on line {first}"),
                    });
                } else {
                    seen.insert(*key, *line);
                }
            }
            // Beyond the limit: the first contact over it is rejected, the rest skipped.
            let mut excess = Vec::new();
            for i in 0..parsed.keys.len() {
                if duplicates.binary_search(&i).is_err() {
                    accepted += 1;
                    if accepted > max_rows {
                        if accepted == max_rows + 1 {
                            rejected.push(Rejection {
                                line: parsed.lines[i],
                                code: Code::PayloadTooLarge,
                                message: format!(
                                    "at most {max_rows} contacts per import; this one and the rest were not read"
                                ),
                            });
                            lock(&board).accepting = false;
                        }
                        excess.push(i);
                    }
                }
            }
            duplicates.extend(excess);
            duplicates.sort_unstable();
            if let Some(prepared) = parsed.prepared.filter(|_| taking) {
                taking = consume(Chunk { prepared, lines: parsed.lines, skipped: duplicates });
                if !taking {
                    lock(&board).accepting = false;
                }
            }
        }
    });
    rejected.sort_by_key(|r| r.line);
    rejected
}

/// Locks a mutex; a panic elsewhere does not make the data unusable here.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hand-over between the parsing threads and the consumer.
struct Board<T> {
    ready: BTreeMap<usize, Parsed<T>>,
    /// The sequence number the consumer waits for.
    next: usize,
    /// Parsing threads still running.
    live: usize,
    /// Whether the consumer still takes chunks (otherwise `prepare` is skipped).
    accepting: bool,
}

struct Parsed<T> {
    prepared: Option<T>,
    /// Size of the segment in the file.
    bytes: usize,
    lines: Vec<u64>,
    keys: Vec<u128>,
    rejected: Vec<Rejection>,
}

/// A run of whole records of the file.
struct Segment<'a> {
    seq: usize,
    bytes: &'a [u8],
    /// The 1-based line number of the first byte.
    first_line: u64,
}

/// Cuts the body of a file into segments of whole records. NDJSON records
/// end at every newline; CSV ones too unless the file has quotes (a quoted
/// field may hold a newline), in which case a CSV reader finds the ends.
struct Segmenter<'a> {
    body: &'a [u8],
    pos: usize,
    line: u64,
    seq: usize,
    records: Option<csv::Reader<&'a [u8]>>,
}

impl<'a> Segmenter<'a> {
    fn new(format: ImportFormat, body: &'a [u8], first_line: u64) -> Self {
        let records = (format == ImportFormat::Csv && memchr::memchr(b'"', body).is_some())
            .then(|| csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(body));
        Self { body, pos: 0, line: first_line, seq: 0, records }
    }

    fn next(&mut self, n: usize) -> Option<Segment<'a>> {
        let rest = &self.body[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let len = match &mut self.records {
            None => memchr::memchr_iter(b'\n', rest).nth(n.max(1) - 1).map_or(rest.len(), |i| i + 1),
            Some(reader) => {
                let mut record = csv::ByteRecord::new();
                for _ in 0..n.max(1) {
                    if !matches!(reader.read_byte_record(&mut record), Ok(true)) {
                        break;
                    }
                }
                (reader.position().byte() as usize).saturating_sub(self.pos).clamp(1, rest.len())
            }
        };
        let bytes = &rest[..len];
        let segment = Segment { seq: self.seq, bytes, first_line: self.line };
        self.seq += 1;
        self.pos += len;
        self.line += memchr::memchr_iter(b'\n', bytes).count() as u64;
        Some(segment)
    }
}

/// One parsed segment: valid contacts with their lines and external-id keys.
#[derive(Default)]
struct SegmentOut {
    contacts: Vec<ContactInput>,
    lines: Vec<u64>,
    keys: Vec<u128>,
    rejected: Vec<Rejection>,
}

impl SegmentOut {
    fn push(&mut self, line: u64, raw: RawContact) {
        match ContactInput::parse(raw) {
            Ok(contact) => {
                self.keys.push(external_id_key(contact.external_id.as_str()));
                self.contacts.push(contact);
                self.lines.push(line);
            }
            Err(e) => {
                let message = format!("{}: {}", e.field, e.code.message_en());
                self.reject(line, e.code, message);
            }
        }
    }
    fn reject(&mut self, line: u64, code: Code, message: String) {
        self.rejected.push(Rejection { line, code, message });
    }
}

fn external_id_key(id: &str) -> u128 {
    siphasher::sip128::SipHasher13::new_with_keys(0x7166_5f69_6d70_6f72, 0x745f_6b65_795f_7631)
        .hash(id.as_bytes())
        .as_u128()
}

fn parse_segment(format: ImportFormat, headers: Option<&[String]>, segment: &Segment<'_>) -> SegmentOut {
    let mut out = SegmentOut::default();
    match (format, headers) {
        (ImportFormat::Csv, Some(headers)) => parse_csv_segment(headers, segment, &mut out),
        _ => parse_ndjson_segment(segment, &mut out),
    }
    out
}

fn parse_ndjson_segment(segment: &Segment<'_>, out: &mut SegmentOut) {
    let data = segment.bytes.strip_suffix(b"\n").unwrap_or(segment.bytes);
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let line_no = segment.first_line + i as u64;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<RawContact>(line) {
            Ok(raw) => out.push(line_no, raw),
            Err(e) => out.reject(line_no, Code::BadJson, format!("column {}: {e}", e.column())),
        }
    }
}

/// Known CSV columns; every other column is a profile attribute.
const CSV_FIELDS: [&str; 8] = ["external_id", "name", "email", "phone", "webhook", "wecom_userid", "tags", "consent"];

/// Reads the header record: the column names, the byte offset where the
/// records start and the number of lines the header took.
fn csv_headers(data: &[u8]) -> Result<(Vec<String>, usize, u64), Rejection> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(data);
    let mut record = csv::StringRecord::new();
    let format_error = |message: String| Rejection { line: 1, code: Code::ImportFormat, message };
    match reader.read_record(&mut record) {
        Ok(true) => {}
        Ok(false) => return Err(format_error("the file is empty: it needs a header line".into())),
        Err(e) => return Err(format_error(format!("the header line is not valid CSV: {e}"))),
    }
    let headers: Vec<String> = record.iter().map(|h| h.trim().to_owned()).collect();
    if !headers.iter().any(|h| h == "external_id") {
        return Err(format_error("the header line has no external_id column".into()));
    }
    let offset = reader.position().byte() as usize;
    let lines = memchr::memchr_iter(b'\n', &data[..offset]).count() as u64;
    Ok((headers, offset, lines.max(1)))
}

fn parse_csv_segment(headers: &[String], segment: &Segment<'_>, out: &mut SegmentOut) {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(segment.bytes);
    let mut record = csv::StringRecord::new();
    loop {
        let line_no = segment.first_line + reader.position().line() - 1;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                if record.iter().all(|f| f.trim().is_empty()) {
                    continue;
                }
                if record.len() != headers.len() {
                    let message = format!(
                        "not valid CSV: the line has {} fields, the header has {}",
                        record.len(),
                        headers.len()
                    );
                    out.reject(line_no, Code::ImportFormat, message);
                    continue;
                }
                out.push(line_no, csv_row(headers, &record));
            }
            Err(e) => {
                let line = e.position().map_or(line_no, |p| segment.first_line + p.line() - 1);
                out.reject(line, Code::ImportFormat, format!("not valid CSV: {e}"));
                // A broken record may leave the reader mid-line; keep going with the next one.
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
            }
        }
    }
}

fn csv_row(headers: &[String], record: &csv::StringRecord) -> RawContact {
    let mut raw = RawContact::default();
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
                raw.attributes.push((key.to_owned(), csv_attribute(value)));
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

    /// Runs the pipeline and collects what the consumer saw.
    fn chunks_of(
        data: &[u8],
        threads: usize,
        chunk_lines: usize,
        stop_after: usize,
    ) -> (Vec<Vec<ContactInput>>, Vec<Rejection>) {
        let mut chunks: Vec<Vec<ContactInput>> = Vec::new();
        let rejected = parse_with(ImportFormat::Ndjson, data, threads, chunk_lines, &|c| c, &mut |chunk| {
            let kept = chunk.prepared.into_iter().enumerate().filter(|(i, _)| !chunk.skipped.contains(i));
            chunks.push(kept.map(|(_, c)| c).collect());
            chunks.len() < stop_after
        });
        (chunks, rejected)
    }

    #[test]
    fn chunked_parse_matches_whole() {
        let data: String = (0..10_000)
            .map(|i| if i % 1000 == 7 { "{bad\n".to_owned() } else { format!("{{\"external_id\":\"u{i}\"}}\n") })
            .collect();
        let whole = parse(ImportFormat::Ndjson, data.as_bytes());
        for threads in [1, 2, 5] {
            let (chunks, rejected) = chunks_of(data.as_bytes(), threads, 3000, usize::MAX);
            // Chunks are cut by lines: 3000 lines hold 2997 valid contacts.
            assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [2997, 2997, 2997, 999]);
            assert_eq!(chunks.concat(), whole.contacts);
            assert_eq!(rejected, whole.rejected);
            // A consumer that stops early still gets every rejection reported.
            let (chunks, rejected) = chunks_of(data.as_bytes(), threads, 3000, 1);
            assert_eq!((chunks.len(), rejected.len()), (1, 10));
        }
    }

    #[test]
    fn rows_beyond_the_limit_are_rejected_once_and_not_handed_over() {
        let data: String = (0..100).map(|i| format!("{{\"external_id\":\"u{}\"}}\n", i % 90)).collect();
        let mut kept = 0;
        let rejected = pipeline(ImportFormat::Ndjson, data.as_bytes(), 2, 7, 40, &|c| c, &mut |chunk| {
            kept += chunk.prepared.len() - chunk.skipped.len();
            true
        });
        assert_eq!(kept, 40);
        let codes: Vec<_> = rejected.iter().map(|r| (r.line, r.code)).collect();
        assert_eq!(codes[0], (41, Code::PayloadTooLarge));
        assert_eq!(codes.len(), 11, "the limit once, then the ten duplicates (u0…u9 again)");
    }

    #[test]
    fn duplicates_across_chunks_are_rejected_in_file_order() {
        let data =
            "{\"external_id\":\"a\"}\n{\"external_id\":\"b\"}\n{\"external_id\":\"a\"}\n{\"external_id\":\"b\"}\n";
        for (threads, chunk_lines) in [(1, 1), (3, 1), (2, 2), (1, 100)] {
            let (chunks, rejected) = chunks_of(data.as_bytes(), threads, chunk_lines, usize::MAX);
            let ids: Vec<String> = chunks.concat().iter().map(|c| c.external_id.as_str().to_owned()).collect();
            assert_eq!(ids, ["a", "b"]);
            let lines: Vec<_> = rejected.iter().map(|r| (r.line, r.code, r.message.as_str())).collect();
            assert_eq!(
                lines,
                [
                    (3, Code::Duplicate, "external_id appears earlier in the file, on line 1"),
                    (4, Code::Duplicate, "external_id appears earlier in the file, on line 2")
                ]
            );
        }
    }

    #[test]
    fn csv_chunks_respect_quoted_newlines() {
        let mut data = String::from("external_id,name,note\n");
        for i in 0..5000 {
            if i % 7 == 0 {
                data.push_str(&format!("u{i},\"名, {i}\",\"two\nlines \"\"quoted\"\"\"\n"));
            } else {
                data.push_str(&format!("u{i},名{i},plain\n"));
            }
        }
        data.push_str("u1,dup,x\nbroken,\"x\n");
        let seq = parse(ImportFormat::Csv, data.as_bytes());
        assert_eq!(seq.contacts.len(), 5000);
        assert_eq!(seq.contacts[7].attributes["note"], AttrValue::Text("two\nlines \"quoted\"".into()));
        assert_eq!(seq.rejected[0].code, Code::Duplicate);
        for threads in [2, 3] {
            let par = parse_parallel(ImportFormat::Csv, data.as_bytes(), threads);
            assert_eq!(par.contacts, seq.contacts);
            assert_eq!(par.lines, seq.lines);
            assert_eq!(par.rejected, seq.rejected);
        }
        // Line numbers count physical lines: the header, u0 on lines 2–3, u1…u6, u7 on 10–11, then u8.
        assert_eq!(seq.lines[8], 12);
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
