//! Measurement (docs/measurement.md): the events of a delivery beyond its
//! state — opened, reading time, replied, forwarded, clicked, converted,
//! reported — and the counters reports read.
//!
//! Every event moves its counters in `measure_counts` and its recipient's
//! engagement sets ([`crate::engagement`]) in its own transaction,
//! and only the first event of its kind per delivery record moves a
//! recipient count (a conditional `UPDATE … WHERE x_at IS NULL` decides which
//! one that is, even when two race). So a report is a read of a few hundred
//! counter rows however many recipients there are, and [`Store::measure_recount`]
//! — the same figures computed from the records — always agrees with it.

use std::collections::BTreeMap;

use crate::{audit, engagement::Marks, params, Code, Conn, Store, StoreError};

/// Upper bounds (exclusive, ms) of the reading-time histogram's buckets; the
/// last bucket is open-ended. A recipient's bucket is that of their total
/// reading time over every view.
pub const READ_HISTOGRAM_MS: [i64; 8] = [2_000, 4_000, 8_000, 15_000, 30_000, 60_000, 120_000, 300_000];

/// The histogram bucket of a total reading time.
pub fn read_bucket(ms: i64) -> i64 {
    READ_HISTOGRAM_MS.iter().take_while(|&&bound| ms >= bound).count() as i64
}

/// Heatmap buckets are hours since the epoch: the report places them in the
/// workspace's zone (so daylight saving time is right for every hour).
pub fn hour_of(t: i64) -> i64 {
    t.div_euclid(3_600_000)
}

/// The channel of counters that belong to the broadcast, not to one delivery
/// channel (every click, every conversion and their value).
pub const ANY_CHANNEL: &str = "*";

/// Moves one counter.
pub(crate) fn bump(
    c: &mut Conn,
    broadcast_id: i64,
    channel: &str,
    metric: &str,
    bucket: i64,
    delta: i64,
) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    c.execute(
        "INSERT INTO measure_counts (broadcast_id, channel, metric, bucket, n) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (broadcast_id, channel, metric, bucket) DO UPDATE SET n = measure_counts.n + excluded.n",
        params![broadcast_id, channel, metric, bucket, delta],
    )?;
    Ok(())
}

/// A delivery record was opened for the first time (its `read_at` just set).
pub(crate) fn first_open(
    c: &mut Conn,
    marks: &mut Marks,
    (broadcast_id, channel, idx): (i64, &str, u32),
    now: i64,
) -> Result<(), StoreError> {
    marks.first_open(broadcast_id, channel, idx, now);
    bump(c, broadcast_id, channel, "opened", -1, 1)?;
    bump(c, broadcast_id, channel, "opened_hour", hour_of(now), 1)
}

/// Starts a view of an inbox message (every open, the first or not): the
/// next close measures from here.
pub(crate) fn start_view(c: &mut Conn, broadcast_id: i64, idx: u32, now: i64) -> Result<(), StoreError> {
    c.execute(
        "UPDATE deliveries SET view_started_at = ? WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ?",
        params![now, broadcast_id, idx],
    )?;
    Ok(())
}

/// A tracked link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    pub id: i64,
    pub workspace_id: i64,
    pub short: String,
    pub url: String,
    pub broadcast_id: Option<i64>,
    pub channel: String,
    pub campaign: Option<String>,
    pub created_at: i64,
    /// Clicks by people.
    pub n_clicks: u64,
    /// Recipients (known by their token) who clicked it, each once.
    pub n_unique: u64,
    /// Requests of bots and prefetchers: redirected, not counted as clicks.
    pub n_filtered: u64,
    pub n_conversions: u64,
    pub conversion_value: i64,
}

const LINK_COLUMNS: &str = "id, workspace_id, short, url, broadcast_id, channel, campaign, created_at, n_clicks, n_unique, n_filtered, n_conversions, conversion_value";

fn link_from(r: &crate::Row) -> LinkRecord {
    LinkRecord {
        id: r.i64(0),
        workspace_id: r.i64(1),
        short: r.string(2),
        url: r.string(3),
        broadcast_id: r.opt_i64(4),
        channel: r.string(5),
        campaign: r.opt_string(6),
        created_at: r.i64(7),
        n_clicks: r.i64(8) as u64,
        n_unique: r.i64(9) as u64,
        n_filtered: r.i64(10) as u64,
        n_conversions: r.i64(11) as u64,
        conversion_value: r.i64(12),
    }
}

/// What a new link is (checked by the caller: an http(s) URL, labels of 1 to 64 characters).
#[derive(Debug, Clone)]
pub struct NewLink {
    pub url: String,
    pub broadcast_id: Option<i64>,
    pub channel: String,
    pub campaign: Option<String>,
}

/// Who clicked, when the URL carried a recipient token (checked by the caller).
#[derive(Debug, Clone, Copy)]
pub struct Clicker<'a> {
    pub contact_idx: u32,
    /// The delivery channel the link reached them on.
    pub channel: &'a str,
}

/// What a click did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickOutcome {
    pub url: String,
    /// Counted as a click (a person, not a bot or a prefetch).
    pub counted: bool,
    /// The recipient's first click on this broadcast.
    pub first_of_recipient: bool,
}

/// A conversion an integrator reports.
#[derive(Debug, Clone, Default)]
pub struct NewConversion {
    /// The integrator's id of the event: reporting it again changes nothing.
    pub event_id: String,
    pub name: String,
    /// In the smallest unit of the integrator's currency (e.g. fen); 0 for none.
    pub value: i64,
    pub broadcast_id: Option<i64>,
    /// The tracked link it came through (its broadcast and channel attribute it).
    pub link_short: Option<String>,
    pub contact_idx: Option<u32>,
    /// The delivery channel, when the contact got the broadcast on several.
    pub channel: Option<String>,
}

/// A recorded conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionRecord {
    pub id: i64,
    pub event_id: String,
    pub broadcast_id: Option<i64>,
    pub link_id: Option<i64>,
    pub contact_idx: Option<u32>,
    pub channel: Option<String>,
    /// The recipient's first conversion on this broadcast.
    pub first_of_recipient: bool,
    pub created_at: i64,
}

/// The figures of one delivery channel (or of all, channel `"all"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelFigures {
    pub channel: String,
    /// Delivery records the broadcast has or will have on this channel.
    pub records: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Left out at send time (consent, opt-out, frequency cap, block), skipped
    /// fallback steps, recalled.
    pub not_sent: u64,
    /// Accepted by a provider, receipt to come, or not sent yet.
    pub pending: u64,
    pub opened: u64,
    pub replied: u64,
    pub forwarded: u64,
    pub clicked: u64,
    pub converted: u64,
    pub reported: u64,
    /// Recipients with a measured reading time, and its sum.
    pub read_timed: u64,
    pub read_ms_sum: i64,
    /// Recipients per [`READ_HISTOGRAM_MS`] bucket (9).
    pub read_histogram: Vec<u64>,
}

impl ChannelFigures {
    fn new(channel: &str) -> Self {
        ChannelFigures {
            channel: channel.into(),
            read_histogram: vec![0; READ_HISTOGRAM_MS.len() + 1],
            ..Default::default()
        }
    }

    fn add(&mut self, o: &ChannelFigures) {
        self.records += o.records;
        self.delivered += o.delivered;
        self.failed += o.failed;
        self.not_sent += o.not_sent;
        self.pending += o.pending;
        self.opened += o.opened;
        self.replied += o.replied;
        self.forwarded += o.forwarded;
        self.clicked += o.clicked;
        self.converted += o.converted;
        self.reported += o.reported;
        self.read_timed += o.read_timed;
        self.read_ms_sum += o.read_ms_sum;
        for (a, b) in self.read_histogram.iter_mut().zip(&o.read_histogram) {
            *a += b;
        }
    }

    fn engagement(&mut self, metric: &str, bucket: i64, n: i64) {
        let n_u = n.max(0) as u64;
        match metric {
            "opened" => self.opened += n_u,
            "replied" => self.replied += n_u,
            "forwarded" => self.forwarded += n_u,
            "clicked" => self.clicked += n_u,
            "converted" => self.converted += n_u,
            "reported" => self.reported += n_u,
            "read_timed" => self.read_timed += n_u,
            "read_ms" => self.read_ms_sum += n,
            "read_hist" => {
                if let Some(slot) = self.read_histogram.get_mut(bucket as usize) {
                    *slot += n_u;
                }
            }
            _ => {}
        }
    }
}

/// Everything a broadcast report shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeasureReport {
    pub broadcast_id: i64,
    pub recipients: u64,
    pub channels: Vec<ChannelFigures>,
    pub all: ChannelFigures,
    /// Recipients who blocked the sender from it.
    pub blocked: u64,
    /// Every click by a person (with a recipient token or not).
    pub clicks: u64,
    pub conversions: u64,
    pub conversion_value: i64,
    /// (hour since the epoch, first opens) and (hour, clicks), ascending.
    pub opens_by_hour: Vec<(i64, u64)>,
    pub clicks_by_hour: Vec<(i64, u64)>,
    /// The broadcast's tracked links, with their channel and campaign.
    pub links: Vec<LinkRecord>,
}

/// One counter row: (channel, metric, bucket) → n.
pub type Counts = BTreeMap<(String, String, i64), i64>;

/// The counters of a broadcast as its records give them (see the module
/// documentation): what `measure_counts` must hold.
fn recount(c: &mut Conn, broadcast_id: i64) -> Result<Counts, StoreError> {
    let mut out = Counts::new();
    let mut add = |channel: &str, metric: &str, bucket: i64, n: i64| {
        if n != 0 {
            *out.entry((channel.to_owned(), metric.to_owned(), bucket)).or_default() += n;
        }
    };
    c.for_each_row(
        "SELECT channel, read_at, replied_at, forwarded_at, clicked_at, converted_at, read_ms FROM deliveries
         WHERE broadcast_id = ? AND (read_at IS NOT NULL OR clicked_at IS NOT NULL OR converted_at IS NOT NULL)",
        params![broadcast_id],
        &mut |r| {
            let ch = r.str(0);
            if let Some(at) = r.opt_i64(1) {
                add(ch, "opened", -1, 1);
                add(ch, "opened_hour", hour_of(at), 1);
            }
            for (i, metric) in [(2, "replied"), (3, "forwarded"), (4, "clicked"), (5, "converted")] {
                if r.opt_i64(i).is_some() {
                    add(ch, metric, -1, 1);
                }
            }
            if let Some(ms) = r.opt_i64(6) {
                add(ch, "read_timed", -1, 1);
                add(ch, "read_ms", -1, ms);
                add(ch, "read_hist", read_bucket(ms), 1);
            }
            Ok(())
        },
    )?;
    for r in c.query("SELECT created_at FROM clicks WHERE broadcast_id = ?", params![broadcast_id])? {
        add(ANY_CHANNEL, "clicks", -1, 1);
        add(ANY_CHANNEL, "clicks_hour", hour_of(r.i64(0)), 1);
    }
    for r in c.query("SELECT value FROM conversions WHERE broadcast_id = ?", params![broadcast_id])? {
        add(ANY_CHANNEL, "conversions", -1, 1);
        add(ANY_CHANNEL, "conversion_value", -1, r.i64(0));
    }
    let reports = c.query_one("SELECT COUNT(*) FROM reports WHERE broadcast_id = ?", params![broadcast_id])?.i64(0);
    add("inbox", "reported", -1, reports);
    Ok(out)
}

/// Hex-free short codes: 8 characters of 62 (47 bits).
fn new_short() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..8).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// The tracked links of a broadcast on a channel: (URL, short code), oldest first.
pub(crate) fn tracked_links(
    c: &mut Conn,
    broadcast_id: i64,
    channel: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(c.query(
        "SELECT url, short FROM links WHERE broadcast_id = ? AND channel = ? ORDER BY id",
        params![broadcast_id, channel],
    )?
    .iter()
    .map(|r| (r.string(0), r.string(1)))
    .collect())
}

/// A segment report's start: the segment's recipients, and a row for each
/// channel of the broadcast.
fn segment_start(
    c: &mut Conn,
    workspace_id: i64,
    broadcast_id: i64,
    members: &qunfa_audience::Bitmap,
) -> Result<(u64, BTreeMap<String, ChannelFigures>), StoreError> {
    let b = c.query_one(
        "SELECT frozen_audience, channels, fallback FROM broadcasts WHERE id = ? AND workspace_id = ?",
        params![broadcast_id, workspace_id],
    )?;
    let recipients = match b.opt_blob(0) {
        Some(blob) => {
            let frozen = qunfa_audience::decode(blob)
                .ok_or_else(|| StoreError::Corrupt(format!("the frozen audience of broadcast {broadcast_id}")))?;
            (&frozen & members).cardinality()
        }
        None => 0,
    };
    let channels = crate::json::channels_from_json(b.str(1))?;
    let fallback = crate::json::fallback_from_json(b.opt_str(2).unwrap_or("[]"))?;
    let by_channel = channels
        .iter()
        .map(|c| c.as_str())
        .chain(fallback.iter().map(|f| f.channel.as_str()))
        .map(|n| (n.to_owned(), ChannelFigures::new(n)))
        .collect();
    Ok((recipients, by_channel))
}

/// A segment report's end: the broadcast's reports, clicks and conversions
/// by recipients of the segment (rows per event, not per recipient), and
/// the totals.
fn segment_finish(
    c: &mut Conn,
    broadcast_id: i64,
    members: &qunfa_audience::Bitmap,
    recipients: u64,
    mut by_channel: BTreeMap<String, ChannelFigures>,
    opens: BTreeMap<i64, u64>,
) -> Result<MeasureReport, StoreError> {
    for r in c.query("SELECT contact_idx FROM reports WHERE broadcast_id = ?", params![broadcast_id])? {
        if members.contains(r.i64(0) as u32) {
            by_channel.entry("inbox".into()).or_insert_with(|| ChannelFigures::new("inbox")).reported += 1;
        }
    }
    let mut clicks: BTreeMap<i64, u64> = BTreeMap::new();
    let mut report = MeasureReport { broadcast_id, recipients, ..Default::default() };
    c.for_each_row(
        "SELECT contact_idx, created_at FROM clicks WHERE broadcast_id = ? AND contact_idx IS NOT NULL",
        params![broadcast_id],
        &mut |r| {
            if members.contains(r.i64(0) as u32) {
                report.clicks += 1;
                *clicks.entry(hour_of(r.i64(1))).or_default() += 1;
            }
            Ok(())
        },
    )?;
    c.for_each_row(
        "SELECT contact_idx, value FROM conversions WHERE broadcast_id = ? AND contact_idx IS NOT NULL",
        params![broadcast_id],
        &mut |r| {
            if members.contains(r.i64(0) as u32) {
                report.conversions += 1;
                report.conversion_value += r.i64(1);
            }
            Ok(())
        },
    )?;
    for f in by_channel.values_mut() {
        f.records = recipients;
        f.pending = recipients.saturating_sub(f.delivered + f.failed + f.not_sent);
    }
    let mut all = ChannelFigures::new("all");
    for f in by_channel.values() {
        all.add(f);
    }
    report.all = all;
    report.channels = by_channel.into_values().collect();
    report.opens_by_hour = opens.into_iter().collect();
    report.clicks_by_hour = clicks.into_iter().collect();
    Ok(report)
}

impl Store {
    /// Closes the view of an inbox message opened last (`POST …/read`):
    /// adds `now − opened` (at most `visible_ms` when the page says how long
    /// it was visible, and at most `cap_ms`) to the recipient's reading time.
    /// Returns the time added, or `None` when no view was open (a repeated
    /// close changes nothing).
    ///
    /// # Errors
    /// `NotFound` when the message was not delivered to this recipient, or database errors.
    pub fn close_view(
        &self,
        workspace_id: i64,
        idx: u32,
        broadcast_id: i64,
        visible_ms: Option<i64>,
        cap_ms: i64,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.db.write(|c| {
            let r = c
                .query_opt(
                    "SELECT view_started_at, read_ms FROM deliveries WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ?
                     AND workspace_id = ? AND state IN ('delivered', 'read')",
                    params![broadcast_id, idx, workspace_id],
                )?
                .ok_or(StoreError::NotFound)?;
            let Some(started) = r.opt_i64(0) else { return Ok(None) };
            let before = r.opt_i64(1);
            let mut ms = (now - started).clamp(0, cap_ms);
            if let Some(v) = visible_ms {
                ms = ms.min(v.max(0));
            }
            // Compare and set: only the close that clears this view, from the
            // total read above, counts it (racing closes: one), so the
            // histogram moves from the bucket that total was in.
            let n = c.execute(
                "UPDATE deliveries SET view_started_at = NULL, read_ms = COALESCE(read_ms, 0) + ?
                 WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND view_started_at = ?
                 AND COALESCE(read_ms, -1) = ?",
                params![ms, broadcast_id, idx, started, before.unwrap_or(-1)],
            )?;
            if n == 0 {
                return Ok(None);
            }
            let after = before.unwrap_or(0) + ms;
            match before {
                None => bump(c, broadcast_id, "inbox", "read_timed", -1, 1)?,
                Some(b) => bump(c, broadcast_id, "inbox", "read_hist", read_bucket(b), -1)?,
            }
            bump(c, broadcast_id, "inbox", "read_hist", read_bucket(after), 1)?;
            bump(c, broadcast_id, "inbox", "read_ms", -1, ms)?;
            let mut marks = Marks::new();
            marks.read_time(broadcast_id, "inbox", idx, before, after);
            marks.apply(c)?;
            Ok(Some(ms))
        })
    }

    /// Creates a tracked link.
    ///
    /// # Errors
    /// `NotFound` for a broadcast of another workspace, or database errors.
    pub fn create_link(
        &self,
        workspace_id: i64,
        new: &NewLink,
        actor: &str,
        now: i64,
    ) -> Result<LinkRecord, StoreError> {
        for _ in 0..4 {
            let short = new_short();
            let result = self.db.write(|c| {
                if let Some(b) = new.broadcast_id {
                    c.query_opt(
                        "SELECT 1 FROM broadcasts WHERE id = ? AND workspace_id = ?",
                        params![b, workspace_id],
                    )?
                    .ok_or(StoreError::NotFound)?;
                }
                let r = c.query_one(
                    &format!(
                        "INSERT INTO links (workspace_id, short, url, broadcast_id, channel, campaign, created_at)
                         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {LINK_COLUMNS}"
                    ),
                    params![
                        workspace_id,
                        short.as_str(),
                        new.url.as_str(),
                        new.broadcast_id,
                        new.channel.as_str(),
                        new.campaign.clone(),
                        now
                    ],
                )?;
                let link = link_from(&r);
                let details = serde_json::json!({
                    "short": link.short, "url": link.url, "broadcast": link.broadcast_id,
                    "channel": link.channel, "campaign": link.campaign,
                });
                audit::append(
                    c,
                    workspace_id,
                    actor,
                    "link.created",
                    &format!("link:{}", link.id),
                    &details.to_string(),
                    now,
                )?;
                Ok(link)
            });
            match result {
                Err(e) if e.is_unique_violation() => continue,
                other => return other,
            }
        }
        Err(StoreError::rejected(Code::Internal, "no free short code after 4 tries"))
    }

    /// One link of the workspace.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn link(&self, workspace_id: i64, id: i64) -> Result<LinkRecord, StoreError> {
        let r = self.db.conn()?.query_one(
            &format!("SELECT {LINK_COLUMNS} FROM links WHERE id = ? AND workspace_id = ?"),
            params![id, workspace_id],
        )?;
        Ok(link_from(&r))
    }

    /// A link by its short code (any workspace: the code is the public name).
    ///
    /// # Errors
    /// Database errors.
    pub fn link_by_short(&self, short: &str) -> Result<Option<LinkRecord>, StoreError> {
        let r =
            self.db.conn()?.query_opt(&format!("SELECT {LINK_COLUMNS} FROM links WHERE short = ?"), params![short])?;
        Ok(r.as_ref().map(link_from))
    }

    /// The workspace's links, newest first, before `before_id`; of one broadcast if given.
    ///
    /// # Errors
    /// Database errors.
    pub fn links(
        &self,
        workspace_id: i64,
        broadcast_id: Option<i64>,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        let rows = match broadcast_id {
            Some(b) => self.db.conn()?.query(
                &format!("SELECT {LINK_COLUMNS} FROM links WHERE broadcast_id = ? AND workspace_id = ? AND id < ? ORDER BY id DESC LIMIT ?"),
                params![b, workspace_id, before_id.unwrap_or(i64::MAX), limit],
            )?,
            None => self.db.conn()?.query(
                &format!("SELECT {LINK_COLUMNS} FROM links WHERE workspace_id = ? AND id < ? ORDER BY id DESC LIMIT ?"),
                params![workspace_id, before_id.unwrap_or(i64::MAX), limit],
            )?,
        };
        Ok(rows.iter().map(link_from).collect())
    }

    /// The tracked links of a broadcast on a channel, as (URL, short code):
    /// the URLs its messages on that channel carry as recipient links.
    ///
    /// # Errors
    /// Database errors.
    pub fn tracked_links(&self, broadcast_id: i64, channel: &str) -> Result<Vec<(String, String)>, StoreError> {
        tracked_links(&mut *self.db.conn()?, broadcast_id, channel)
    }

    /// The tracked links of several broadcasts on a channel, as (broadcast,
    /// URL, short code).
    ///
    /// # Errors
    /// Database errors.
    pub fn tracked_links_of(
        &self,
        broadcast_ids: &[i64],
        channel: &str,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        if broadcast_ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = broadcast_ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        Ok(self
            .db
            .conn()?
            .query(
                &format!("SELECT broadcast_id, url, short FROM links WHERE broadcast_id IN ({list}) AND channel = ? ORDER BY id"),
                params![channel],
            )?
            .iter()
            .map(|r| (r.i64(0), r.string(1), r.string(2)))
            .collect())
    }

    /// Records a request for a tracked link; `person` is false for a bot or
    /// a prefetch (redirected, counted apart). A recipient's click counts
    /// once per link (`n_unique`) and once per broadcast and channel
    /// (`clicked`); every click by a person counts in `clicks`. A recipient
    /// token of someone the broadcast never reached on that channel is
    /// ignored (the click still counts, without a recipient).
    ///
    /// # Errors
    /// `NotFound` for an unknown short code, or database errors.
    pub fn record_click(
        &self,
        short: &str,
        clicker: Option<Clicker<'_>>,
        person: bool,
        now: i64,
    ) -> Result<ClickOutcome, StoreError> {
        self.db.write(|c| {
            let link = c
                .query_opt(&format!("SELECT {LINK_COLUMNS} FROM links WHERE short = ?"), params![short])?
                .map(|r| link_from(&r))
                .ok_or(StoreError::NotFound)?;
            if !person {
                c.execute("UPDATE links SET n_filtered = n_filtered + 1 WHERE id = ?", params![link.id])?;
                return Ok(ClickOutcome { url: link.url, counted: false, first_of_recipient: false });
            }
            // A recipient is known only on a link of a broadcast that reached them.
            let recipient = match (clicker, link.broadcast_id) {
                (Some(k), Some(b)) => c
                    .query_opt(
                        "SELECT clicked_at FROM deliveries WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND workspace_id = ?",
                        params![b, k.channel, k.contact_idx, link.workspace_id],
                    )?
                    .map(|_| k),
                _ => None,
            };
            let mut first_of_link = false;
            let mut first_of_recipient = false;
            if let (Some(k), Some(b)) = (recipient, link.broadcast_id) {
                first_of_link = c.execute(
                    "INSERT INTO link_clickers (link_id, contact_idx) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    params![link.id, k.contact_idx],
                )? == 1;
                first_of_recipient = c.execute(
                    "UPDATE deliveries SET clicked_at = ? WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND clicked_at IS NULL",
                    params![now, b, k.channel, k.contact_idx],
                )? == 1;
            }
            c.execute(
                "INSERT INTO clicks (link_id, workspace_id, broadcast_id, contact_idx, channel, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                params![
                    link.id,
                    link.workspace_id,
                    link.broadcast_id,
                    recipient.map(|k| k.contact_idx),
                    recipient.map(|k| k.channel.to_owned()),
                    now
                ],
            )?;
            c.execute(
                "UPDATE links SET n_clicks = n_clicks + 1, n_unique = n_unique + ? WHERE id = ?",
                params![i64::from(first_of_link), link.id],
            )?;
            if let Some(b) = link.broadcast_id {
                bump(c, b, ANY_CHANNEL, "clicks", -1, 1)?;
                bump(c, b, ANY_CHANNEL, "clicks_hour", hour_of(now), 1)?;
                if let (true, Some(k)) = (first_of_recipient, recipient) {
                    bump(c, b, k.channel, "clicked", -1, 1)?;
                    let mut marks = Marks::new();
                    marks.set(b, k.channel, "clicked", -1, k.contact_idx, true);
                    marks.apply(c)?;
                }
            }
            Ok(ClickOutcome { url: link.url, counted: true, first_of_recipient })
        })
    }

    /// An email (or any external channel's) open, from the tracking pixel:
    /// the record's first open counts like an inbox read. Returns whether it
    /// was the first.
    ///
    /// # Errors
    /// `NotFound` when the broadcast did not reach the contact on that channel, or database errors.
    pub fn record_open(
        &self,
        workspace_id: i64,
        broadcast_id: i64,
        idx: u32,
        channel: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.db.write(|c| {
            c.query_opt(
                "SELECT 1 FROM deliveries WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND workspace_id = ?
                 AND state IN ('delivered', 'read', 'sent')",
                params![broadcast_id, channel, idx, workspace_id],
            )?
            .ok_or(StoreError::NotFound)?;
            let first = c.execute(
                "UPDATE deliveries SET read_at = ? WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND read_at IS NULL",
                params![now, broadcast_id, channel, idx],
            )? == 1;
            if first {
                c.execute("UPDATE broadcasts SET n_read = n_read + 1 WHERE id = ?", params![broadcast_id])?;
                let mut marks = Marks::new();
                first_open(c, &mut marks, (broadcast_id, channel, idx), now)?;
                marks.apply(c)?;
            }
            Ok(first)
        })
    }

    /// Records a conversion (see [`NewConversion`]); returns it and whether
    /// it is new. The same `event_id` with the same report returns the
    /// first record; with a different one it is refused.
    ///
    /// # Errors
    /// `QF-DUPLICATE` for an `event_id` used with other values, `NotFound`
    /// for an unknown link or broadcast or a contact the broadcast did not
    /// reach, or database errors.
    pub fn record_conversion(
        &self,
        workspace_id: i64,
        new: &NewConversion,
        now: i64,
    ) -> Result<(ConversionRecord, bool), StoreError> {
        let request_hash = crate::secret_hash(&format!(
            "{}\n{}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            new.name, new.value, new.broadcast_id, new.link_short, new.contact_idx, new.channel, new.event_id
        ));
        let result = self.db.write(|c| {
            if let Some(r) = c.query_opt(
                "SELECT id, broadcast_id, link_id, contact_idx, channel, created_at, request_hash FROM conversions WHERE workspace_id = ? AND event_id = ?",
                params![workspace_id, new.event_id.as_str()],
            )? {
                if r.str(6) != request_hash {
                    return Err(StoreError::rejected(
                        Code::Duplicate,
                        format!("event_id {:?} was reported with other values", new.event_id),
                    ));
                }
                return Ok((
                    ConversionRecord {
                        id: r.i64(0),
                        event_id: new.event_id.clone(),
                        broadcast_id: r.opt_i64(1),
                        link_id: r.opt_i64(2),
                        contact_idx: r.opt_i64(3).map(|i| i as u32),
                        channel: r.opt_string(4),
                        first_of_recipient: false,
                        created_at: r.i64(5),
                    },
                    false,
                ));
            }
            let mut broadcast_id = new.broadcast_id;
            let mut link_id = None;
            if let Some(short) = &new.link_short {
                let l = c
                    .query_opt("SELECT id, broadcast_id FROM links WHERE short = ? AND workspace_id = ?", params![short.as_str(), workspace_id])?
                    .ok_or(StoreError::NotFound)?;
                link_id = Some(l.i64(0));
                match (broadcast_id, l.opt_i64(1)) {
                    (Some(a), Some(b)) if a != b => {
                        return Err(StoreError::rejected(Code::BadRequest, "the link belongs to another broadcast"))
                    }
                    (None, b) => broadcast_id = b,
                    _ => {}
                }
            }
            if let Some(b) = broadcast_id {
                c.query_opt("SELECT 1 FROM broadcasts WHERE id = ? AND workspace_id = ?", params![b, workspace_id])?
                    .ok_or(StoreError::NotFound)?;
            }
            // The contact's delivery record: of the channel given, or the first one.
            let mut channel = None;
            let mut first_of_recipient = false;
            if let (Some(idx), Some(b)) = (new.contact_idx, broadcast_id) {
                let r = match &new.channel {
                    Some(ch) => c.query_opt(
                        "SELECT channel FROM deliveries WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND workspace_id = ?",
                        params![b, ch.as_str(), idx, workspace_id],
                    )?,
                    None => c.query_opt(
                        "SELECT channel FROM deliveries WHERE broadcast_id = ? AND contact_idx = ? AND workspace_id = ?
                         AND state IN ('delivered', 'read', 'sent') ORDER BY channel LIMIT 1",
                        params![b, idx, workspace_id],
                    )?,
                };
                let ch = r.ok_or(StoreError::NotFound)?.string(0);
                first_of_recipient = c.execute(
                    "UPDATE deliveries SET converted_at = ? WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND converted_at IS NULL",
                    params![now, b, ch.as_str(), idx],
                )? == 1;
                if first_of_recipient {
                    bump(c, b, &ch, "converted", -1, 1)?;
                    let mut marks = Marks::new();
                    marks.set(b, &ch, "converted", -1, idx, true);
                    marks.apply(c)?;
                }
                channel = Some(ch);
            }
            let id = c
                .query_one(
                    "INSERT INTO conversions (workspace_id, event_id, name, value, broadcast_id, link_id, contact_idx, channel, request_hash, created_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    params![
                        workspace_id,
                        new.event_id.as_str(),
                        new.name.as_str(),
                        new.value,
                        broadcast_id,
                        link_id,
                        new.contact_idx.filter(|_| broadcast_id.is_some()),
                        channel.clone(),
                        request_hash.as_str(),
                        now
                    ],
                )?
                .i64(0);
            if let Some(l) = link_id {
                c.execute(
                    "UPDATE links SET n_conversions = n_conversions + 1, conversion_value = conversion_value + ? WHERE id = ?",
                    params![new.value, l],
                )?;
            }
            if let Some(b) = broadcast_id {
                bump(c, b, ANY_CHANNEL, "conversions", -1, 1)?;
                bump(c, b, ANY_CHANNEL, "conversion_value", -1, new.value)?;
            }
            Ok((
                ConversionRecord {
                    id,
                    event_id: new.event_id.clone(),
                    broadcast_id,
                    link_id,
                    contact_idx: new.contact_idx.filter(|_| broadcast_id.is_some()),
                    channel,
                    first_of_recipient,
                    created_at: now,
                },
                true,
            ))
        });
        match result {
            // Two racing reports of one event: the loser reads the winner's.
            Err(e) if e.is_unique_violation() => self.record_conversion(workspace_id, new, now),
            other => other,
        }
    }

    /// The report of a broadcast, from its counters: one read of the
    /// broadcast row, its `measure_counts` rows and its links — no scan of
    /// its delivery records (a broadcast on several channels has its delivery
    /// states per channel from the sizes of its engagement sets).
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn measure_report(&self, workspace_id: i64, broadcast_id: i64) -> Result<MeasureReport, StoreError> {
        self.db.read(|c| {
            let b = c.query_one(
                "SELECT n_recipients, channels, fallback, n_delivered, n_failed, n_filtered, n_skipped, n_sent, n_recalled, n_blocked
                 FROM broadcasts WHERE id = ? AND workspace_id = ?",
                params![broadcast_id, workspace_id],
            )?;
            let channels = crate::json::channels_from_json(b.str(1))?;
            let fallback = crate::json::fallback_from_json(b.opt_str(2).unwrap_or("[]"))?;
            let mut names: Vec<String> = channels.iter().map(|c| c.as_str().to_owned()).collect();
            names.extend(fallback.iter().map(|f| f.channel.as_str().to_owned()));
            let recipients = b.i64(0) as u64;
            let mut by_channel: BTreeMap<String, ChannelFigures> =
                names.iter().map(|n| (n.clone(), ChannelFigures::new(n))).collect();
            if names.len() == 1 {
                // One channel: the broadcast's counters are that channel's.
                let f = by_channel.get_mut(&names[0]).expect("inserted above");
                let (delivered, failed, sent) = (b.i64(3) as u64, b.i64(4) as u64, b.i64(7) as u64);
                let not_sent = (b.i64(5) + b.i64(6) + b.i64(8)) as u64;
                f.records = recipients;
                f.delivered = delivered;
                f.failed = failed;
                f.not_sent = not_sent;
                f.pending = recipients.saturating_sub(delivered + failed + not_sent);
                let _ = sent;
            } else {
                // Several channels: the sizes of their delivery-state sets.
                for r in c.query(
                    "SELECT channel, metric, CAST(SUM(cardinality) AS BIGINT) FROM measure_sets
                     WHERE broadcast_id = ? AND metric IN ('delivered', 'failed', 'not_sent') GROUP BY channel, metric",
                    params![broadcast_id],
                )? {
                    let f = by_channel.entry(r.string(0)).or_insert_with(|| ChannelFigures::new(r.str(0)));
                    let n = r.i64(2) as u64;
                    match r.str(1) {
                        "delivered" => f.delivered += n,
                        "failed" => f.failed += n,
                        _ => f.not_sent += n,
                    }
                }
                for f in by_channel.values_mut() {
                    f.records = recipients;
                    f.pending = recipients.saturating_sub(f.delivered + f.failed + f.not_sent);
                }
            }
            let mut report = MeasureReport {
                broadcast_id,
                recipients,
                blocked: b.i64(9) as u64,
                ..Default::default()
            };
            for r in c.query(
                "SELECT channel, metric, bucket, n FROM measure_counts WHERE broadcast_id = ? ORDER BY channel, metric, bucket",
                params![broadcast_id],
            )? {
                let (channel, metric, bucket, n) = (r.str(0), r.str(1), r.i64(2), r.i64(3));
                match (channel, metric) {
                    (ANY_CHANNEL, "clicks") => report.clicks += n as u64,
                    (ANY_CHANNEL, "clicks_hour") => report.clicks_by_hour.push((bucket, n as u64)),
                    (ANY_CHANNEL, "conversions") => report.conversions += n as u64,
                    (ANY_CHANNEL, "conversion_value") => report.conversion_value += n,
                    (_, "opened_hour") => report.opens_by_hour.push((bucket, n as u64)),
                    (ch, m) => by_channel.entry(ch.to_owned()).or_insert_with(|| ChannelFigures::new(ch)).engagement(m, bucket, n),
                }
            }
            report.opens_by_hour = merge_hours(std::mem::take(&mut report.opens_by_hour));
            report.clicks_by_hour = merge_hours(std::mem::take(&mut report.clicks_by_hour));
            let mut all = ChannelFigures::new("all");
            for f in by_channel.values() {
                all.add(f);
            }
            report.all = all;
            report.channels = by_channel.into_values().collect();
            report.links = c
                .query(
                    &format!("SELECT {LINK_COLUMNS} FROM links WHERE broadcast_id = ? ORDER BY id"),
                    params![broadcast_id],
                )?
                .iter()
                .map(link_from)
                .collect();
            Ok(report)
        })
    }

    /// The report restricted to the recipients in `members` (a segment),
    /// from the broadcast's engagement sets ([`crate::engagement`]): each set
    /// intersected with the segment, then the broadcast's click, conversion
    /// and report rows. Equal to [`Store::measure_report_of_scan`].
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn measure_report_of(
        &self,
        workspace_id: i64,
        broadcast_id: i64,
        members: &qunfa_audience::Bitmap,
    ) -> Result<MeasureReport, StoreError> {
        self.db.read(|c| {
            let (recipients, mut by_channel) = segment_start(c, workspace_id, broadcast_id, members)?;
            let mut opens: BTreeMap<i64, u64> = BTreeMap::new();
            for ((channel, metric, bucket), bits) in crate::engagement::load(c, broadcast_id)? {
                let n = bits.and_cardinality(members);
                if n == 0 {
                    continue;
                }
                let f = by_channel.entry(channel).or_insert_with_key(|ch| ChannelFigures::new(ch));
                match metric.as_str() {
                    "delivered" => f.delivered += n,
                    "failed" => f.failed += n,
                    "not_sent" => f.not_sent += n,
                    "opened_hour" => *opens.entry(bucket).or_default() += n,
                    // Σ 2ᵏ · |segment ∩ {reading times with bit k}|.
                    "read_ms_bit" => f.read_ms_sum += (n as i64) << bucket,
                    m => f.engagement(m, bucket, n as i64),
                }
            }
            segment_finish(c, broadcast_id, members, recipients, by_channel, opens)
        })
    }

    /// [`Store::measure_report_of`] computed from the delivery records: a
    /// scan of every record of the broadcast (the reference the sets are
    /// checked against, and the baseline of `qunfa bench report`).
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn measure_report_of_scan(
        &self,
        workspace_id: i64,
        broadcast_id: i64,
        members: &qunfa_audience::Bitmap,
    ) -> Result<MeasureReport, StoreError> {
        self.db.read(|c| {
            let (recipients, mut by_channel) = segment_start(c, workspace_id, broadcast_id, members)?;
            let mut opens: BTreeMap<i64, u64> = BTreeMap::new();
            c.for_each_row(
                "SELECT channel, contact_idx, state, read_at, replied_at, forwarded_at, clicked_at, converted_at, read_ms
                 FROM deliveries WHERE broadcast_id = ?",
                params![broadcast_id],
                &mut |r| {
                    if !members.contains(r.i64(1) as u32) {
                        return Ok(());
                    }
                    let f = by_channel.entry(r.string(0)).or_insert_with(|| ChannelFigures::new(r.str(0)));
                    match crate::engagement::state_class(r.str(2)) {
                        Some("delivered") => f.delivered += 1,
                        Some("failed") => f.failed += 1,
                        Some(_) => f.not_sent += 1,
                        None => {}
                    }
                    if let Some(at) = r.opt_i64(3) {
                        f.opened += 1;
                        *opens.entry(hour_of(at)).or_default() += 1;
                    }
                    f.replied += u64::from(r.opt_i64(4).is_some());
                    f.forwarded += u64::from(r.opt_i64(5).is_some());
                    f.clicked += u64::from(r.opt_i64(6).is_some());
                    f.converted += u64::from(r.opt_i64(7).is_some());
                    if let Some(ms) = r.opt_i64(8) {
                        f.read_timed += 1;
                        f.read_ms_sum += ms;
                        f.read_histogram[read_bucket(ms) as usize] += 1;
                    }
                    Ok(())
                },
            )?;
            segment_finish(c, broadcast_id, members, recipients, by_channel, opens)
        })
    }

    /// The counters of a broadcast as stored, and as its records give them:
    /// the two are equal unless a counter was lost or counted twice.
    ///
    /// # Errors
    /// Database errors.
    pub fn measure_recount(&self, broadcast_id: i64) -> Result<(Counts, Counts), StoreError> {
        self.db.read(|c| {
            let mut stored = Counts::new();
            for r in c.query(
                "SELECT channel, metric, bucket, n FROM measure_counts WHERE broadcast_id = ? AND n <> 0",
                params![broadcast_id],
            )? {
                stored.insert((r.string(0), r.string(1), r.i64(2)), r.i64(3));
            }
            Ok((stored, recount(c, broadcast_id)?))
        })
    }

    /// Each live contact's value of attribute `name`, as text (numbers and
    /// booleans written out), for stratified A/B assignment; contacts without it are left out.
    ///
    /// # Errors
    /// Database errors.
    pub fn contact_attribute_values(
        &self,
        workspace_id: i64,
        name: &str,
    ) -> Result<std::collections::HashMap<u32, String>, StoreError> {
        let mut out = std::collections::HashMap::new();
        self.db.conn()?.for_each_row(
            "SELECT idx, attributes FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL",
            params![workspace_id],
            &mut |r| {
                if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(r.str(1)) {
                    match m.get(name) {
                        Some(serde_json::Value::String(s)) => {
                            out.insert(r.i64(0) as u32, s.clone());
                        }
                        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                            out.insert(r.i64(0) as u32, v.to_string());
                        }
                        _ => {}
                    }
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Sets a broadcast's counters and engagement sets to what its records
    /// give (for records written in bulk, e.g. by `qunfa bench report`).
    ///
    /// # Errors
    /// Database errors.
    pub fn measure_rebuild(&self, broadcast_id: i64) -> Result<(), StoreError> {
        self.db.write(|c| {
            let counts = recount(c, broadcast_id)?;
            c.execute("DELETE FROM measure_counts WHERE broadcast_id = ?", params![broadcast_id])?;
            for ((channel, metric, bucket), n) in counts {
                bump(c, broadcast_id, &channel, &metric, bucket, n)?;
            }
            crate::engagement::rebuild(c, broadcast_id)
        })
    }

    /// The engagement sets of a broadcast as stored, and as its records give
    /// them: the two are equal unless a writer missed a change.
    ///
    /// # Errors
    /// Database errors.
    pub fn measure_sets_recount(&self, broadcast_id: i64) -> Result<(EngagementSets, EngagementSets), StoreError> {
        self.db.read(|c| Ok((crate::engagement::load(c, broadcast_id)?, crate::engagement::derive(c, broadcast_id)?)))
    }
}

/// Engagement sets: (channel, metric, bucket) → recipients.
pub type EngagementSets = BTreeMap<(String, String, i64), qunfa_audience::Bitmap>;

/// Sums the counts of equal hours (opens of several channels), ascending.
fn merge_hours(list: Vec<(i64, u64)>) -> Vec<(i64, u64)> {
    let mut m: BTreeMap<i64, u64> = BTreeMap::new();
    for (h, n) in list {
        *m.entry(h).or_default() += n;
    }
    m.into_iter().collect()
}

#[cfg(test)]
mod tests {
    //! Racing events count once each, and the counters equal a recount of
    //! the records, on both backends.

    use qunfa_core::{
        import::{parse, ImportFormat},
        workspace::{Name, WorkspaceKind},
        Policy,
    };

    use super::*;
    use crate::test_support;

    const NOW: i64 = 1_767_225_600_000;

    #[test]
    fn racing_events_sqlite() {
        racing_events_count_once(test_support::sqlite());
    }

    #[test]
    fn racing_events_postgres() {
        racing_events_count_once(test_support::postgres());
    }

    fn racing_events_count_once(db: test_support::TestDb) {
        let store = Store::open(db.location.clone(), 8).unwrap();
        let (w, key) =
            store.create_workspace(&Name::parse("门店").unwrap(), WorkspaceKind::Enterprise, None, "t", NOW).unwrap();
        let people: String = (0..40).map(|i| format!("{{\"external_id\":\"c{i}\"}}\n")).collect();
        let people = parse(ImportFormat::Ndjson, people.as_bytes());
        store.import_contacts(w.id, &Policy::builtin().tiers.enterprise, &people.contacts, "t", NOW).unwrap();
        let b = store
            .db
            .write(|c| {
                let id = c
                    .query_one(
                        "INSERT INTO broadcasts (workspace_id, member_id, state, content, audience, channels, priority,
                         request_hash, created_at, n_recipients, n_delivered) VALUES (?, ?, 'completed', '{\"type\":\"text\",\"text\":\"x\"}',
                         '{\"all\":true}', '[\"inbox\"]', 2, 'x', ?, 40, 40) RETURNING id",
                        params![w.id, key.member_id, NOW],
                    )?
                    .i64(0);
                for idx in 0..40u32 {
                    c.execute(
                        "INSERT INTO deliveries (broadcast_id, channel, contact_idx, workspace_id, state, attempts, queued_at, delivered_at)
                         VALUES (?, 'inbox', ?, ?, 'delivered', 1, ?, ?)",
                        params![id, idx, w.id, NOW, NOW],
                    )?;
                }
                // Records written by hand: their sets too.
                crate::engagement::rebuild(c, id)?;
                Ok(id)
            })
            .unwrap();
        let link = store
            .create_link(
                w.id,
                &NewLink {
                    url: "https://example.com/".into(),
                    broadcast_id: Some(b),
                    channel: "poster".into(),
                    campaign: None,
                },
                "t",
                NOW,
            )
            .unwrap();
        // Four threads each open, close, click and convert for every recipient.
        std::thread::scope(|scope| {
            for t in 0..4i64 {
                let (store, short) = (&store, link.short.as_str());
                scope.spawn(move || {
                    for idx in 0..40u32 {
                        let at = NOW + 1_000 * t + i64::from(idx);
                        store.mark_read(w.id, idx, b, at).unwrap();
                        store.close_view(w.id, idx, b, None, 600_000, at + 3_000).unwrap();
                        let clicker = Clicker { contact_idx: idx, channel: "inbox" };
                        store.record_click(short, Some(clicker), true, at).unwrap();
                        let conversion = NewConversion {
                            event_id: format!("order-{idx}"),
                            name: "purchase".into(),
                            value: 100,
                            broadcast_id: Some(b),
                            contact_idx: Some(idx),
                            ..Default::default()
                        };
                        store.record_conversion(w.id, &conversion, at).unwrap();
                    }
                });
            }
        });
        let r = store.measure_report(w.id, b).unwrap();
        let a = &r.all;
        assert_eq!((a.opened, a.clicked, a.converted), (40, 40, 40), "each recipient once");
        assert_eq!((r.clicks, r.conversions, r.conversion_value), (160, 40, 4_000), "every click; each event id once");
        assert_eq!(store.broadcast(w.id, b).unwrap().n_read, 40);
        // Every view was closed once: at least one 3 s view per recipient, none counted twice.
        assert_eq!(a.read_timed, 40);
        assert_eq!(a.read_histogram.iter().sum::<u64>(), 40);
        let link = store.link(w.id, link.id).unwrap();
        assert_eq!((link.n_clicks, link.n_unique, link.n_conversions), (160, 40, 0));
        let (stored, recounted) = store.measure_recount(b).unwrap();
        assert_eq!(stored, recounted);
        let (stored, derived) = store.measure_sets_recount(b).unwrap();
        assert_eq!(stored, derived, "racing events keep the sets exact");
        assert_eq!(stored[&("inbox".to_owned(), "clicked".to_owned(), -1)].cardinality(), 40);
        // A segment's report from the sets is the one from the records.
        let even = qunfa_audience::Bitmap::from_range_with_step(0..40, 2);
        let from_sets = store.measure_report_of(w.id, b, &even).unwrap();
        assert_eq!(from_sets, store.measure_report_of_scan(w.id, b, &even).unwrap());
        assert_eq!((from_sets.all.opened, from_sets.all.delivered, from_sets.conversions), (20, 20, 20));
        assert_eq!(from_sets.all.read_ms_sum, store.measure_report_of_scan(w.id, b, &even).unwrap().all.read_ms_sum);
        // Rebuilding from the records changes nothing.
        store.measure_rebuild(b).unwrap();
        assert_eq!(store.measure_report(w.id, b).unwrap(), r);
    }
}
