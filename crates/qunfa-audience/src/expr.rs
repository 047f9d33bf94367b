//! The audience expression language.
//!
//! ```text
//! tag:"客户等级/金牌" & city = "上海" & spend > 5000 & !tag:流失
//! (tag:A | tag:B) & last_active > -90d & dept:"总部/华东区"
//! level in ("金牌", "银牌") | id in (4294967297, 4294967298) | email exists
//! ```
//!
//! Grammar (keywords are case-insensitive; `&`/`and`, `|`/`or`, `!`/`not`):
//!
//! ```text
//! expr    := and ( "|" and )*
//! and     := unary ( "&" unary )*
//! unary   := "!" unary | primary
//! primary := "(" expr ")" | "all"
//!          | "tag" ":" name           tag with its sub-tags
//!          | "dept" ":" (name | int)  department (path of names, or id) with sub-departments
//!          | "id" ":" int | "id" "in" "(" int ("," int)* ")"
//!          | "segment" ":" name       a saved segment's expression, evaluated now
//!          | key op value | key "in" "(" value ("," value)* ")"
//!          | key "contains" text | key "exists"
//! op      := "=" | "!=" | "<" | "<=" | ">" | ">="
//! value   := text | number | true | false | date | relative
//! date    := YYYY-MM-DD[THH:MM[:SS]]      (UTC)
//! relative:= ("+"|"-") int ("d"|"h"|"w")   (from now: -90d is 90 days ago)
//! ```
//!
//! Texts are quoted with `"` or `'` (backslash escapes the quote); a bare word
//! of letters, digits, CJK, `_`, `-`, `.`, `/` or `@` is a text too.

use std::fmt;

/// A position in the expression, in characters from 0.
pub type Pos = usize;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    All,
    Tag {
        path: String,
        pos: Pos,
    },
    Dept {
        dept: DeptRef,
        pos: Pos,
    },
    /// Public contact ids.
    Ids(Vec<u64>),
    /// A saved segment by name; replaced by its expression before evaluation
    /// ([`Expr::expand_segments`]).
    Segment {
        name: String,
        pos: Pos,
    },
    Attr {
        key: String,
        pred: Pred,
        pos: Pos,
    },
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeptRef {
    Id(i64),
    Path(String),
}

/// A condition on one attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    Cmp(CmpOp, Literal),
    In(Vec<Literal>),
    Contains(String),
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }
}

/// A value in an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Number(f64),
    Bool(bool),
    /// Milliseconds since the Unix epoch (UTC).
    Date(i64),
    /// Milliseconds from the moment of evaluation (negative: in the past).
    Relative(i64),
}

impl Expr {
    /// The tag paths the expression names (also under `!`), in order.
    pub fn tag_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Tag { path, .. } = e {
                if !out.contains(path) {
                    out.push(path.clone());
                }
            }
        });
        out
    }

    /// Replaces every `segment:NAME` by the segment's parsed expression
    /// (segments may use segments, up to 8 deep). `lookup` gives a segment's
    /// source, or `None` when there is no such segment.
    ///
    /// # Errors
    /// The unknown name and its position, or a segment that does not parse
    /// or nests too deep (a cycle).
    pub fn expand_segments(&mut self, lookup: &mut dyn FnMut(&str) -> Option<String>) -> Result<(), SegmentError> {
        self.expand_at(lookup, 0)
    }

    fn expand_at(&mut self, lookup: &mut dyn FnMut(&str) -> Option<String>, depth: usize) -> Result<(), SegmentError> {
        match self {
            Expr::Segment { name, pos } => {
                let (name, pos) = (name.clone(), *pos);
                if depth >= 8 {
                    return Err(SegmentError::TooDeep { name, pos });
                }
                let src = lookup(&name).ok_or_else(|| SegmentError::Unknown { name: name.clone(), pos })?;
                let mut inner = parse(&src).map_err(|error| SegmentError::Broken { name: name.clone(), pos, error })?;
                inner.expand_at(lookup, depth + 1)?;
                *self = inner;
                Ok(())
            }
            Expr::Not(e) => e.expand_at(lookup, depth),
            Expr::And(v) | Expr::Or(v) => v.iter_mut().try_for_each(|e| e.expand_at(lookup, depth)),
            _ => Ok(()),
        }
    }

    fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Not(e) => e.walk(f),
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.walk(f)),
            _ => {}
        }
    }

    /// How many leaf terms the expression has (tags, departments, ids,
    /// attribute conditions, `all`).
    pub fn n_terms(&self) -> usize {
        match self {
            Expr::Not(e) => e.n_terms(),
            Expr::And(v) | Expr::Or(v) => v.iter().map(Expr::n_terms).sum(),
            _ => 1,
        }
    }
}

/// Why a `segment:` term cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentError {
    Unknown { name: String, pos: Pos },
    Broken { name: String, pos: Pos, error: SyntaxError },
    TooDeep { name: String, pos: Pos },
}

/// Why an expression does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    pub hint: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {} ({})", self.pos, self.message, self.hint)
    }
}

impl std::error::Error for SyntaxError {}

/// Longest expression accepted, in characters.
pub const MAX_EXPR_CHARS: usize = 8192;
/// Deepest nesting of parentheses and `!`.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    And,
    Or,
    Not,
    Comma,
    Colon,
    Op(CmpOp),
    Quoted(String),
    Word(String),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: Pos,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '.' | '/' | '@')
}

fn err(pos: Pos, message: impl Into<String>, hint: impl Into<String>) -> SyntaxError {
    SyntaxError { pos, message: message.into(), hint: hint.into() }
}

fn lex(src: &str) -> Result<Vec<Token>, SyntaxError> {
    let chars: Vec<char> = src.chars().collect();
    if chars.len() > MAX_EXPR_CHARS {
        return Err(err(
            MAX_EXPR_CHARS,
            "the expression is too long",
            format!("use at most {MAX_EXPR_CHARS} characters, or a saved segment"),
        ));
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i;
        let simple = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' | '（' => Some(Tok::LParen),
            ')' | '）' => Some(Tok::RParen),
            '&' => Some(Tok::And),
            '|' => Some(Tok::Or),
            ',' | '，' => Some(Tok::Comma),
            ':' | '：' => Some(Tok::Colon),
            _ => None,
        };
        if let Some(tok) = simple {
            // `&&` and `||` read like `&` and `|`.
            if matches!(tok, Tok::And | Tok::Or) && chars.get(i + 1) == Some(&c) {
                i += 1;
            }
            out.push(Token { tok, pos });
            i += 1;
            continue;
        }
        match c {
            '!' | '！' => {
                if chars.get(i + 1) == Some(&'=') {
                    out.push(Token { tok: Tok::Op(CmpOp::Ne), pos });
                    i += 2;
                } else {
                    out.push(Token { tok: Tok::Not, pos });
                    i += 1;
                }
            }
            '=' => {
                i += if chars.get(i + 1) == Some(&'=') { 2 } else { 1 };
                out.push(Token { tok: Tok::Op(CmpOp::Eq), pos });
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                let op = match (c, eq) {
                    ('<', true) => CmpOp::Le,
                    ('<', false) => CmpOp::Lt,
                    (_, true) => CmpOp::Ge,
                    (_, false) => CmpOp::Gt,
                };
                i += if eq { 2 } else { 1 };
                out.push(Token { tok: Tok::Op(op), pos });
            }
            '"' | '\'' | '“' | '”' | '‘' | '’' => {
                let close: &[char] = match c {
                    '"' => &['"'],
                    '\'' => &['\''],
                    '“' | '”' => &['”', '“'],
                    _ => &['’', '‘'],
                };
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(err(
                                pos,
                                "this quoted text is not closed",
                                format!("end it with {}", close[0]),
                            ));
                        }
                        Some('\\') if chars.get(i + 1).is_some() => {
                            text.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(ch) if close.contains(ch) => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            text.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Token { tok: Tok::Quoted(text), pos });
            }
            c if is_word_char(c) => {
                let start = i;
                while i < chars.len() && is_word_char(chars[i]) {
                    i += 1;
                }
                out.push(Token { tok: Tok::Word(chars[start..i].iter().collect()), pos });
            }
            other => {
                return Err(err(
                    pos,
                    format!("unexpected character {other:?}"),
                    "quote texts that contain symbols, e.g. city = \"上海\"",
                ));
            }
        }
    }
    Ok(out)
}

/// Parses an expression.
///
/// # Errors
/// The first problem, with its position and a hint.
pub fn parse(src: &str) -> Result<Expr, SyntaxError> {
    let tokens = lex(src)?;
    let end = src.chars().count();
    let mut p = Parser { tokens, at: 0, end, depth: 0 };
    if p.tokens.is_empty() {
        return Err(err(0, "the expression is empty", "e.g. tag:\"客户等级/金牌\" & city = \"上海\", or all"));
    }
    let e = p.or()?;
    if let Some(t) = p.peek() {
        let hint = match t.tok {
            Tok::RParen => "this ) has no matching (",
            _ => "join conditions with & (and) or | (or)",
        };
        return Err(err(t.pos, format!("unexpected {}", describe(&t.tok)), hint));
    }
    Ok(e)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    end: Pos,
    depth: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "(".into(),
        Tok::RParen => ")".into(),
        Tok::And => "&".into(),
        Tok::Or => "|".into(),
        Tok::Not => "!".into(),
        Tok::Comma => ",".into(),
        Tok::Colon => ":".into(),
        Tok::Op(op) => op.as_str().into(),
        Tok::Quoted(s) => format!("\"{s}\""),
        Tok::Word(w) => format!("`{w}`"),
    }
}

fn keyword(t: &Tok, kw: &str) -> bool {
    matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }
    fn pos(&self) -> Pos {
        self.peek().map_or(self.end, |t| t.pos)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }
    fn eat(&mut self, f: impl Fn(&Tok) -> bool) -> bool {
        if self.peek().is_some_and(|t| f(&t.tok)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, SyntaxError> {
        let mut parts = vec![self.and()?];
        while self.eat(|t| matches!(t, Tok::Or) || keyword(t, "or")) {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one part") } else { Expr::Or(parts) })
    }

    fn and(&mut self) -> Result<Expr, SyntaxError> {
        let mut parts = vec![self.unary()?];
        while self.eat(|t| matches!(t, Tok::And) || keyword(t, "and")) {
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one part") } else { Expr::And(parts) })
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        if self.eat(|t| matches!(t, Tok::Not) || keyword(t, "not")) {
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn nest(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err(self.pos(), "the expression nests too deeply", format!("use at most {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn primary(&mut self) -> Result<Expr, SyntaxError> {
        let Some(t) = self.next() else {
            return Err(err(self.end, "the expression ends too early", "add a condition, e.g. tag:\"金牌\""));
        };
        match &t.tok {
            Tok::LParen => {
                self.nest()?;
                let inner = self.or()?;
                self.depth -= 1;
                if !self.eat(|t| matches!(t, Tok::RParen)) {
                    return Err(err(self.pos(), "a ( is not closed", format!("add ) to close the ( at {}", t.pos)));
                }
                Ok(inner)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("all") && !self.next_is_predicate() => Ok(Expr::All),
            Tok::Word(w) if w.eq_ignore_ascii_case("tag") && self.eat(|t| matches!(t, Tok::Colon)) => {
                let pos = self.pos();
                let path = self.name("a tag path after tag:, e.g. tag:\"客户等级/金牌\"")?;
                Ok(Expr::Tag { path, pos })
            }
            Tok::Word(w)
                if (w.eq_ignore_ascii_case("dept") || w.eq_ignore_ascii_case("department"))
                    && self.eat(|t| matches!(t, Tok::Colon)) =>
            {
                let pos = self.pos();
                let name = self.name("a department after dept:, e.g. dept:\"总部/华东区\" or dept:12")?;
                let dept = match name.parse::<i64>() {
                    Ok(id) if !matches!(self.tokens[self.at - 1].tok, Tok::Quoted(_)) => DeptRef::Id(id),
                    _ => DeptRef::Path(name),
                };
                Ok(Expr::Dept { dept, pos })
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("segment") && self.eat(|t| matches!(t, Tok::Colon)) => {
                let pos = self.pos();
                let name = self.name("a segment name after segment:, e.g. segment:\"高价值客户\"")?;
                Ok(Expr::Segment { name, pos })
            }
            Tok::Word(w)
                if w.eq_ignore_ascii_case("id")
                    && self.peek().is_some_and(|n| matches!(n.tok, Tok::Colon) || keyword(&n.tok, "in")) =>
            {
                let ids = if self.eat(|t| matches!(t, Tok::Colon)) {
                    vec![self.id()?]
                } else {
                    self.at += 1; // in
                    self.list(|p| p.id())?
                };
                Ok(Expr::Ids(ids))
            }
            Tok::Word(key) | Tok::Quoted(key) => self.attribute(key.clone(), t.pos),
            other => Err(err(
                t.pos,
                format!("expected a condition, found {}", describe(other)),
                "a condition is tag:…, dept:…, id:…, an attribute test such as city = \"上海\", or all",
            )),
        }
    }

    /// Whether the next token makes the current word an attribute name.
    fn next_is_predicate(&self) -> bool {
        self.peek().is_some_and(|t| {
            matches!(t.tok, Tok::Op(_))
                || keyword(&t.tok, "in")
                || keyword(&t.tok, "contains")
                || keyword(&t.tok, "exists")
        })
    }

    fn name(&mut self, what: &str) -> Result<String, SyntaxError> {
        match self.next() {
            Some(Token { tok: Tok::Word(w) | Tok::Quoted(w), .. }) if !w.is_empty() => Ok(w),
            Some(t) => Err(err(t.pos, format!("expected {what}"), "quote names that contain spaces or symbols")),
            None => Err(err(self.end, format!("expected {what}"), "the expression ends too early")),
        }
    }

    fn id(&mut self) -> Result<u64, SyntaxError> {
        match self.next() {
            Some(Token { tok: Tok::Word(w), pos }) => w.parse::<u64>().map_err(|_| {
                err(pos, format!("`{w}` is not a contact id"), "contact ids are whole numbers, as the API returns them")
            }),
            Some(t) => Err(err(
                t.pos,
                format!("expected a contact id, found {}", describe(&t.tok)),
                "contact ids are whole numbers",
            )),
            None => Err(err(self.end, "expected a contact id", "the expression ends too early")),
        }
    }

    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T, SyntaxError>) -> Result<Vec<T>, SyntaxError> {
        if !self.eat(|t| matches!(t, Tok::LParen)) {
            return Err(err(self.pos(), "expected ( after in", "write a list as in (\"a\", \"b\")"));
        }
        let mut out = vec![item(self)?];
        while self.eat(|t| matches!(t, Tok::Comma)) {
            out.push(item(self)?);
        }
        if !self.eat(|t| matches!(t, Tok::RParen)) {
            return Err(err(self.pos(), "expected , or ) in the list", "separate values with commas and close with )"));
        }
        Ok(out)
    }

    fn attribute(&mut self, key: String, pos: Pos) -> Result<Expr, SyntaxError> {
        let valid = !key.is_empty()
            && key.len() <= 64
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !key.as_bytes()[0].is_ascii_digit();
        let Some(next) = self.next() else {
            return Err(err(
                self.end,
                format!("`{key}` needs a condition"),
                format!("e.g. {key} = \"…\", {key} > 10, {key} exists, or tag:{key}"),
            ));
        };
        if !valid {
            return Err(err(
                pos,
                format!("`{key}` is not an attribute name"),
                "attribute names are letters, digits and _; for a tag write tag:\"…\"",
            ));
        }
        let pred = match next.tok {
            Tok::Op(op) => {
                let (lit, at) = self.value()?;
                if matches!(op, CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge)
                    && matches!(lit, Literal::Text(_) | Literal::Bool(_))
                {
                    return Err(err(
                        at,
                        format!("{} compares numbers and dates; this is not a number or a date", op.as_str()),
                        "write a number (spend > 5000), a date (2026-01-01) or a relative time (-90d)",
                    ));
                }
                Pred::Cmp(op, lit)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("in") => Pred::In(self.list(|p| p.value().map(|(l, _)| l))?),
            Tok::Word(w) if w.eq_ignore_ascii_case("contains") => match self.value()?.0 {
                Literal::Text(s) => Pred::Contains(s),
                _ => return Err(err(next.pos, "contains needs a text", format!("e.g. {key} contains \"华东\""))),
            },
            Tok::Word(w) if w.eq_ignore_ascii_case("exists") => Pred::Exists,
            other => {
                return Err(err(
                    next.pos,
                    format!(
                        "expected =, !=, <, <=, >, >=, in, contains or exists after `{key}`, found {}",
                        describe(&other)
                    ),
                    format!("e.g. {key} = \"上海\""),
                ));
            }
        };
        Ok(Expr::Attr { key, pred, pos })
    }

    fn value(&mut self) -> Result<(Literal, Pos), SyntaxError> {
        match self.next() {
            Some(Token { tok: Tok::Quoted(s), pos }) => Ok((Literal::Text(s), pos)),
            Some(Token { tok: Tok::Word(w), pos }) => Ok((word_literal(&w, pos)?, pos)),
            Some(t) => Err(err(
                t.pos,
                format!("expected a value, found {}", describe(&t.tok)),
                "a value is \"text\", a number, true/false, a date or -90d",
            )),
            None => Err(err(self.end, "expected a value", "the expression ends too early")),
        }
    }
}

fn word_literal(w: &str, pos: Pos) -> Result<Literal, SyntaxError> {
    if w.eq_ignore_ascii_case("true") {
        return Ok(Literal::Bool(true));
    }
    if w.eq_ignore_ascii_case("false") {
        return Ok(Literal::Bool(false));
    }
    if let Some(ms) = parse_relative(w) {
        return Ok(Literal::Relative(ms));
    }
    if let Some(ms) = parse_date(w) {
        return Ok(Literal::Date(ms));
    }
    let numeric = w.bytes().any(|b| b.is_ascii_digit())
        && w.bytes().enumerate().all(|(i, b)| b.is_ascii_digit() || b == b'.' || (i == 0 && matches!(b, b'-' | b'+')));
    if numeric {
        return match w.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Literal::Number(n)),
            _ => Err(err(pos, format!("`{w}` is not a number"), "write numbers like 5000 or 12.5")),
        };
    }
    Ok(Literal::Text(w.to_owned()))
}

/// `-90d`, `+7d`, `-12h`, `-2w` → milliseconds.
fn parse_relative(w: &str) -> Option<i64> {
    let sign = match w.as_bytes().first()? {
        b'-' => -1,
        b'+' => 1,
        _ => return None,
    };
    let unit: i64 = match w.as_bytes().last()? {
        b'd' | b'D' => 86_400_000,
        b'h' | b'H' => 3_600_000,
        b'w' | b'W' => 7 * 86_400_000,
        _ => return None,
    };
    let n: i64 = w[1..w.len() - 1].parse().ok().filter(|n| *n <= 36_500 * 24)?;
    Some(sign * n * unit)
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch as `YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM:SS`
/// when not midnight (UTC): what [`parse_date`] reads back to the second.
pub fn format_date(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let secs = ms.rem_euclid(86_400_000) / 1000;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if secs == 0 {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    }
}

/// `YYYY-MM-DD`, optionally `THH:MM` or `THH:MM:SS` (also with a space or a
/// trailing `Z`), as milliseconds since the epoch, UTC.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let month_days = [
        31,
        if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    let rest = s[10..].strip_suffix('Z').unwrap_or(&s[10..]);
    if !rest.is_empty() {
        let t = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' '))?;
        let tb = t.as_bytes();
        if !(tb.len() == 5 || (tb.len() == 8 && tb[5] == b':')) || tb[2] != b':' {
            return None;
        }
        let (h, mi) = (num(11..13)?, num(14..16)?);
        let sec = if tb.len() == 8 { num(17..19)? } else { 0 };
        if h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        ms += ((h * 60 + mi) * 60 + sec) * 1000;
    }
    Some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(key: &str, pred: Pred, pos: Pos) -> Expr {
        Expr::Attr { key: key.into(), pred, pos }
    }

    #[test]
    fn precedence_and_forms() {
        let e = parse(r#"tag:"客户等级/金牌" & city = 上海 | !(spend > 5000) & last_active >= -90d"#).unwrap();
        assert_eq!(
            e,
            Expr::Or(vec![
                Expr::And(vec![
                    Expr::Tag { path: "客户等级/金牌".into(), pos: 4 },
                    attr("city", Pred::Cmp(CmpOp::Eq, Literal::Text("上海".into())), 16),
                ]),
                Expr::And(vec![
                    Expr::Not(Box::new(attr("spend", Pred::Cmp(CmpOp::Gt, Literal::Number(5000.0)), 30))),
                    attr("last_active", Pred::Cmp(CmpOp::Ge, Literal::Relative(-90 * 86_400_000)), 46),
                ]),
            ])
        );
        assert_eq!(e.n_terms(), 4);
        assert_eq!(
            parse("level in ('金牌', \"银牌\") and email exists or note contains 'vip' AND NOT all").unwrap(),
            Expr::Or(vec![
                Expr::And(vec![
                    attr("level", Pred::In(vec![Literal::Text("金牌".into()), Literal::Text("银牌".into())]), 0),
                    attr("email", Pred::Exists, 26),
                ]),
                Expr::And(vec![attr("note", Pred::Contains("vip".into()), 42), Expr::Not(Box::new(Expr::All))]),
            ])
        );
        assert_eq!(
            parse("id in (4294967297, 4294967298) | id:5").unwrap(),
            Expr::Or(vec![Expr::Ids(vec![4294967297, 4294967298]), Expr::Ids(vec![5])])
        );
        assert_eq!(parse("dept:12").unwrap(), Expr::Dept { dept: DeptRef::Id(12), pos: 5 });
        assert_eq!(parse("dept:\"12\"").unwrap(), Expr::Dept { dept: DeptRef::Path("12".into()), pos: 5 });
        assert_eq!(parse("vip = true && born < 1990-01-01").unwrap().n_terms(), 2);
        // Full-width punctuation from Chinese input methods.
        assert!(parse("tag：金牌 ＆ x = 1").is_err(), "＆ is not an operator");
        assert_eq!(parse("（tag：金牌）").unwrap(), Expr::Tag { path: "金牌".into(), pos: 5 });
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases = [
            ("", 0, "empty"),
            ("tag:", 4, "expected a tag path"),
            ("(tag:a", 6, "not closed"),
            ("tag:a)", 5, "unexpected )"),
            ("tag:a tag:b", 6, "unexpected `tag`"),
            ("city = ", 7, "expected a value"),
            ("city ~ 1", 5, "unexpected character"),
            ("city > \"上海\"", 7, "compares numbers"),
            ("city", 4, "needs a condition"),
            ("city = \"上海", 7, "not closed"),
            ("9x = 1", 0, "not an attribute name"),
            ("spend > 1e5x", 8, "not a number or a date"),
            ("spend > 1.2.3", 8, "is not a number"),
            ("id in (1, x)", 10, "not a contact id"),
            ("a = 1 &", 7, "ends too early"),
        ];
        for (src, pos, message) in cases {
            let e = parse(src).expect_err(src);
            assert_eq!(e.pos, pos, "{src}: {e}");
            assert!(e.message.contains(message), "{src}: {e}");
            assert!(!e.hint.is_empty());
        }
        let deep = "!".repeat(100) + "all";
        assert!(parse(&deep).unwrap_err().message.contains("nests too deeply"));
    }

    #[test]
    fn dates_and_relative_times() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2026-11-21"), Some(1_795_219_200_000));
        assert_eq!(parse_date("2026-11-21T08:30"), Some(1_795_219_200_000 + (8 * 60 + 30) * 60_000));
        assert_eq!(parse_date("2026-11-21 08:30:15Z"), Some(1_795_219_200_000 + ((8 * 60 + 30) * 60 + 15) * 1000));
        assert_eq!(parse_date("2024-02-29"), Some(1_709_164_800_000));
        for bad in ["2023-02-29", "2026-13-01", "2026-1-01", "2026-11-21T25:00", "2026-11-21X", "20261121"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(parse_relative("-90d"), Some(-90 * 86_400_000));
        assert_eq!(parse_relative("+2w"), Some(14 * 86_400_000));
        assert_eq!(parse_relative("-12h"), Some(-12 * 3_600_000));
        assert_eq!(parse_relative("90d"), None);
        for s in ["1970-01-01", "2024-02-29", "2026-11-21T08:30:15", "1969-12-31T23:59:59", "2000-03-01"] {
            assert_eq!(format_date(parse_date(s).unwrap()), s);
        }
    }
}
