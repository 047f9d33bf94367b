//! `qunfa bench audience`: audience expressions over a large workspace, the
//! bitmap index against the same expressions in SQL on the same SQLite
//! database.
//!
//! The data: N contacts with 20 profile attributes (8 categorical texts, 2
//! booleans, 6 numbers, 4 dates) stored as qunfa stores them, and 200 tags
//! (10 at 30 % density under `客户/`, 190 at 2 % under `兴趣/`). Membership is
//! written twice: as qunfa's bitmaps (`member_sets`, what the index loads) and
//! as one row per membership in `bench_contact_tags (workspace_id, tag_id,
//! contact_idx)` with its primary key — the relational form a SQL segment
//! engine would query. The SQL baseline runs each expression as one
//! `SELECT COUNT(*)` (tags as indexed `IN` subqueries, attributes with
//! `json_extract`), and every count must equal the index's.

use crate::bench::percentile;
use std::{borrow::Cow, collections::BTreeMap, path::PathBuf, time::Instant};

use anyhow::{ensure, Context};
use qunfa_audience::expr::{self, CmpOp, DeptRef, Expr, Literal, Pred};
use qunfa_audience::Bitmap;
use qunfa_store::{now_millis, params, DbLocation, Store, Value};
use rand::{rngs::StdRng as SmallRng, Rng, SeedableRng};

const DENSE_TAGS: usize = 10;
const SPARSE_TAGS: usize = 190;
const CITIES: [&str; 30] = [
    "上海",
    "北京",
    "广州",
    "深圳",
    "杭州",
    "南京",
    "苏州",
    "成都",
    "重庆",
    "武汉",
    "西安",
    "天津",
    "长沙",
    "郑州",
    "青岛",
    "宁波",
    "厦门",
    "福州",
    "合肥",
    "济南",
    "沈阳",
    "大连",
    "昆明",
    "贵阳",
    "南宁",
    "哈尔滨",
    "长春",
    "石家庄",
    "太原",
    "南昌",
];
const PROVINCES: [&str; 10] = ["上海", "北京", "广东", "浙江", "江苏", "四川", "湖北", "陕西", "山东", "福建"];
const LEVELS: [&str; 5] = ["金牌", "银牌", "铜牌", "普通", "新客"];
const CHANNELS: [&str; 8] = ["门店", "小程序", "公众号", "企业微信", "电商", "电话", "地推", "转介绍"];
const OCCUPATIONS: [&str; 20] = [
    "软件工程师",
    "教师",
    "医生",
    "护士",
    "律师",
    "会计",
    "销售",
    "设计师",
    "学生",
    "公务员",
    "机械工程师",
    "厨师",
    "司机",
    "记者",
    "建筑工程师",
    "经理",
    "店主",
    "研究员",
    "自由职业",
    "退休",
];
const DEVICES: [&str; 4] = ["iOS", "Android", "HarmonyOS", "PC"];
const SOURCES: [&str; 12] =
    ["广告", "搜索", "朋友圈", "直播", "短视频", "社群", "线下活动", "老客推荐", "邮件", "短信", "海报", "其他"];

/// The ten representative expressions (the first six mirror ANCHORS.md).
fn queries() -> Vec<(&'static str, String)> {
    vec![
        ("A ∧ B (dense)", "tag:客户/A0 & tag:客户/A1".into()),
        ("(A ∨ B) ∧ ¬C ∧ D", "(tag:客户/A0 | tag:客户/A1) & !tag:客户/A2 & tag:客户/A3".into()),
        ("a ∧ b (sparse)", "tag:兴趣/S0 & tag:兴趣/S1".into()),
        ("(a ∨ b) ∧ A", "(tag:兴趣/S0 | tag:兴趣/S1) & tag:客户/A0".into()),
        ("A ∧ spend > 5000 ∧ city = c7", "tag:客户/A0 & spend > 5000 & city = 成都".into()),
        ("¬A", "!tag:客户/A0".into()),
        (
            "subtree ∧ date ∧ in ∧ ¬bool",
            "tag:客户 & last_active > -90d & level in (金牌, 银牌) & !(subscribed = false)".into(),
        ),
        ("city ∧ age range ∧ gender", "city = 上海 & age >= 25 & age < 35 & gender = 女".into()),
        ("A ∧ spend ∧ orders ∧ ¬a", "tag:客户/A5 & spend > 1000 & orders >= 3 & !tag:兴趣/S7".into()),
        ("contains ∨ (province ∧ vip)", "occupation contains 工程 | province = 浙江 & vip = true".into()),
    ]
}

/// A tag-only expression computed with plain bitmap calls (`None` when it
/// uses anything else): tags are read in place, the rest in the order written.
fn plain<'a>(e: &Expr, leaves: &'a BTreeMap<String, Bitmap>, live: &Bitmap) -> Option<Cow<'a, Bitmap>> {
    Some(match e {
        Expr::Tag { path, .. } => Cow::Borrowed(leaves.get(path)?),
        Expr::Not(inner) => Cow::Owned(live - &*plain(inner, leaves, live)?),
        Expr::Or(parts) => {
            let parts = parts.iter().map(|p| plain(p, leaves, live)).collect::<Option<Vec<_>>>()?;
            Cow::Owned(Bitmap::fast_or(&parts.iter().map(|p| &**p).collect::<Vec<_>>()))
        }
        Expr::And(parts) => {
            let mut parts = parts.iter().map(|p| plain(p, leaves, live));
            let first = parts.next()??;
            let mut acc = match parts.next() {
                Some(second) => first.and(&*second?),
                None => return Some(first),
            };
            for p in parts {
                acc &= &*p?;
            }
            Cow::Owned(acc)
        }
        _ => return None,
    })
}

/// Days from the epoch to a civil date.
fn civil(days: i64) -> String {
    qunfa_audience::expr::format_date(days * 86_400_000)
}

fn attributes(rng: &mut SmallRng, today: i64) -> String {
    let pick = |rng: &mut SmallRng, list: &[&'static str]| list[rng.gen_range(0..list.len())];
    let city = pick(rng, &CITIES);
    let v = serde_json::json!({
        "city": city,
        "province": pick(rng, &PROVINCES),
        "gender": if rng.gen_bool(0.5) { "女" } else { "男" },
        "level": pick(rng, &LEVELS),
        "channel": pick(rng, &CHANNELS),
        "occupation": pick(rng, &OCCUPATIONS),
        "device": pick(rng, &DEVICES),
        "source": pick(rng, &SOURCES),
        "vip": rng.gen_bool(0.1),
        "subscribed": rng.gen_bool(0.8),
        "age": rng.gen_range(16..80),
        "spend": rng.gen_range(0..20_000),
        "orders": rng.gen_range(0..50),
        "points": rng.gen_range(0..100_000),
        "score": (rng.gen_range(0..1000) as f64) / 10.0,
        "visits": rng.gen_range(0..500),
        "last_active": civil(today - rng.gen_range(0..730)),
        "created": civil(today - rng.gen_range(0..3650)),
        "birthday": civil(today - rng.gen_range(6000..25_000)),
        "last_order": civil(today - rng.gen_range(0..1000)),
    });
    v.to_string()
}

/// Creates the workspace, contacts, tags and both forms of membership.
fn generate(store: &Store, n: u32) -> anyhow::Result<i64> {
    let (w, _) = store.create_workspace(
        &qunfa_core::workspace::Name::parse("audience bench")?,
        qunfa_core::workspace::WorkspaceKind::Enterprise,
        None,
        "bench",
        now_millis(),
    )?;
    let ws = w.id;
    let today = now_millis() / 86_400_000;
    let mut rng = SmallRng::seed_from_u64(20_261_121);
    let t = Instant::now();
    // Contacts, in batches of 100k per transaction-free bulk insert inside one write.
    store.db.write(|c| {
        let mut i = 0u32;
        while i < n {
            let end = (i + 100_000).min(n);
            let rows: Vec<Vec<Value>> = (i..end)
                .map(|idx| {
                    vec![
                        Value::Int(ws),
                        Value::Int(i64::from(idx)),
                        Value::Text(format!("c{idx}")),
                        Value::Text(format!("用户{idx}")),
                        Value::Text(attributes(&mut rng, today)),
                        Value::Text("{}".into()),
                        Value::Int(0),
                        Value::Int(0),
                        Value::Int(1),
                    ]
                })
                .collect();
            c.bulk_insert_borrowed(
                "contacts",
                &[
                    "workspace_id",
                    "idx",
                    "external_id",
                    "name",
                    "attributes",
                    "consent",
                    "created_at",
                    "updated_at",
                    "version",
                ],
                "",
                &rows,
            )?;
            i = end;
        }
        c.execute(
            "UPDATE workspaces SET next_contact_idx = ?, contacts_version = 1 WHERE id = ?",
            params![i64::from(n), ws],
        )?;
        Ok(())
    })?;
    println!("  generated {n} contacts with 20 attributes in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    // Tags: 客户 (parent) with A0…A9 dense, 兴趣 with S0…S189 sparse.
    let tier = qunfa_core::Policy::builtin().tiers.enterprise;
    let mut tag_ids = Vec::new();
    for k in 0..DENSE_TAGS + SPARSE_TAGS {
        let path = if k < DENSE_TAGS { format!("客户/A{k}") } else { format!("兴趣/S{}", k - DENSE_TAGS) };
        let rec = store.create_tag(ws, &tier, &qunfa_core::tag::TagPath::parse(&path)?, "bench", now_millis())?;
        tag_ids.push(rec.id);
    }
    store.db.write(|c| {
        c.batch(
            "CREATE TABLE IF NOT EXISTS bench_contact_tags (
                workspace_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, contact_idx INTEGER NOT NULL,
                PRIMARY KEY (workspace_id, tag_id, contact_idx)) WITHOUT ROWID",
        )
    })?;
    let mut n_rows = 0u64;
    for (k, tag_id) in tag_ids.iter().enumerate() {
        let p = if k < DENSE_TAGS { 0.3 } else { 0.02 };
        let members: Bitmap = (0..n).filter(|_| rng.gen_bool(p)).collect();
        n_rows += members.cardinality();
        store.db.write(|c| {
            let mut blobs = Vec::new();
            for chunk in 0..=(n.saturating_sub(1) >> 16) {
                let lo = chunk << 16;
                let mut part = members.clone();
                part.remove_range(..lo);
                part.remove_range((lo | 0xFFFF) + 1..);
                if part.is_empty() {
                    continue;
                }
                let blob = qunfa_audience::encode(&part);
                blobs.push(vec![
                    Value::Int(ws),
                    Value::Int(1),
                    Value::Int(*tag_id),
                    Value::Int(i64::from(chunk)),
                    Value::Int(part.cardinality() as i64),
                    Value::Blob(blob),
                    Value::Int(1),
                ]);
            }
            c.bulk_insert_borrowed(
                "member_sets",
                &["workspace_id", "kind", "set_id", "chunk", "cardinality", "bits", "version"],
                "",
                &blobs,
            )?;
            c.bulk_insert(
                "bench_contact_tags",
                &["workspace_id", "tag_id", "contact_idx"],
                "",
                &mut members.iter().map(|i| vec![Value::Int(ws), Value::Int(*tag_id), Value::Int(i64::from(i))]),
            )?;
            c.execute("UPDATE workspaces SET members_version = members_version + 1 WHERE id = ?", params![ws])?;
            Ok(())
        })?;
    }
    println!(
        "  generated 200 tags: {n_rows} memberships, as bitmaps and as rows, in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(ws)
}

/// The tag ids of a path's subtree.
fn subtree_ids(tags: &[(i64, String)], path: &str) -> Vec<i64> {
    tags.iter().filter(|(_, p)| p == path || p.starts_with(&format!("{path}/"))).map(|(id, _)| *id).collect()
}

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The same expression as a SQL condition on `contacts c`.
fn to_sql(e: &Expr, ws: i64, tags: &[(i64, String)], now_ms: i64) -> String {
    let num_cmp = |key: &str, op: CmpOp, v: String| {
        format!(
            "(json_type(c.attributes, '$.{key}') IN ('integer', 'real') AND json_extract(c.attributes, '$.{key}') {} {v})",
            op.as_str()
        )
    };
    let lit = |key: &str, op: CmpOp, l: &Literal| match l {
        Literal::Text(t) => match op {
            CmpOp::Eq | CmpOp::Ne => format!(
                "(json_type(c.attributes, '$.{key}') = 'text' AND json_extract(c.attributes, '$.{key}') {} {})",
                op.as_str(),
                sql_text(t)
            ),
            _ => "0".into(),
        },
        Literal::Bool(b) => format!(
            "(json_type(c.attributes, '$.{key}') = '{}')",
            match (op, b) {
                (CmpOp::Eq, true) | (CmpOp::Ne, false) => "true",
                _ => "false",
            }
        ),
        Literal::Number(n) => num_cmp(key, op, n.to_string()),
        Literal::Date(ms) | Literal::Relative(ms) => {
            let at = if matches!(l, Literal::Relative(_)) { now_ms + ms } else { *ms };
            // Stored dates are YYYY-MM-DD: compare as text against the day, which is
            // exact for date-only values and midnight-aligned `at`.
            let day = civil(at.div_euclid(86_400_000));
            let exact_midnight = at.rem_euclid(86_400_000) == 0;
            let (op, day) = match (op, exact_midnight) {
                (CmpOp::Gt, false) | (CmpOp::Ge, false) => (CmpOp::Gt, day),
                (CmpOp::Lt, false) | (CmpOp::Le, false) => (CmpOp::Le, day),
                (op, _) => (op, day),
            };
            format!("(json_extract(c.attributes, '$.{key}') {} {})", op.as_str(), sql_text(&day))
        }
    };
    match e {
        Expr::All => "1".into(),
        Expr::Tag { path, .. } => {
            let ids: Vec<String> = subtree_ids(tags, path).iter().map(ToString::to_string).collect();
            format!(
                "c.idx IN (SELECT contact_idx FROM bench_contact_tags WHERE workspace_id = {ws} AND tag_id IN ({}))",
                ids.join(", ")
            )
        }
        // The generated workspace has no departments or segments.
        Expr::Dept { dept: DeptRef::Id(_) | DeptRef::Path(_), .. } | Expr::Segment { .. } => "0".into(),
        Expr::Ids(ids) => format!(
            "c.idx IN ({})",
            ids.iter().map(|i| (i & 0xFFFF_FFFF).to_string()).collect::<Vec<_>>().join(", ")
        ),
        Expr::Attr { key, pred, .. } => match pred {
            Pred::Exists => format!("(json_type(c.attributes, '$.{key}') IS NOT NULL)"),
            Pred::Contains(n) => format!(
                "(json_type(c.attributes, '$.{key}') = 'text' AND instr(lower(json_extract(c.attributes, '$.{key}')), lower({})) > 0)",
                sql_text(n)
            ),
            Pred::In(list) => format!("({})", list.iter().map(|l| lit(key, CmpOp::Eq, l)).collect::<Vec<_>>().join(" OR ")),
            Pred::Cmp(op, l) => lit(key, *op, l),
        },
        Expr::Not(inner) => format!("NOT COALESCE({}, 0)", to_sql(inner, ws, tags, now_ms)),
        Expr::And(v) => format!("({})", v.iter().map(|x| to_sql(x, ws, tags, now_ms)).collect::<Vec<_>>().join(" AND ")),
        Expr::Or(v) => format!("({})", v.iter().map(|x| to_sql(x, ws, tags, now_ms)).collect::<Vec<_>>().join(" OR ")),
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs the benchmark; `db` keeps (and reuses) the generated database.
pub fn run(n: u32, runs: usize, sql_runs: usize, db: Option<PathBuf>, only: Option<usize>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = db.unwrap_or_else(|| tmp.path().join("audience.db"));
    let reuse = path.exists();
    println!(
        "bench audience: {n} contacts, 20 attributes, 200 tags (10 at 30 %, 190 at 2 %); {runs} runs per expression, SQL {sql_runs}"
    );
    let rss_start = rss_bytes();
    let ws = {
        let store = Store::open(DbLocation::Sqlite(path.clone()), 2)?;
        if reuse {
            let r = store.db.conn()?.query_one("SELECT MAX(id), MAX(next_contact_idx) FROM workspaces", params![])?;
            ensure!(r.i64(1) == i64::from(n), "{} holds {} contacts, not {n}", path.display(), r.i64(1));
            println!("  reusing {}", path.display());
            r.i64(0)
        } else {
            generate(&store, n)?
        }
    };
    // The index, built from the database as `qunfa serve` builds it. One
    // connection with a small page cache, so that the resident memory it adds
    // is the index's (the build's temporaries are freed and given back first).
    let store = Store::open(DbLocation::Sqlite(path.clone()), 1)?;
    store.db.conn()?.batch("PRAGMA cache_size = -16384")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let rss_before = rss_bytes();
    let t = Instant::now();
    let estimate = store.with_audience(ws, |i| i.memory())?;
    let build = t.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rss_after = rss_bytes();
    println!(
        "  index built from the database in {build:.1} s; resident memory +{:.0} MiB (process {:.0} MiB{}, peak {:.0} MiB), index heap estimate {:.0} MiB",
        (rss_after.saturating_sub(rss_before)) as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        if reuse { "" } else { ", after generating the data in this process" },
        peak_rss_bytes() as f64 / 1048576.0,
        estimate as f64 / 1048576.0
    );
    let _ = rss_start;
    let tags: Vec<(i64, String)> = store
        .db
        .conn()?
        .query("SELECT id, path FROM tags WHERE workspace_id = ?", params![ws])?
        .iter()
        .map(|r| (r.i64(0), r.string(1)))
        .collect();
    let now = now_millis();
    println!(
        "  {:<30} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9}",
        "expression", "count", "first ms", "p50 ms", "p99 ms", "eval p50", "plain p50", "SQL ms", "SQL/p50"
    );
    // The baseline for tag-only expressions: the same bitmaps combined by
    // hand with plain CRoaring calls, in the order written, no planning.
    let leaves: BTreeMap<String, Bitmap> = store.with_audience(ws, |i| {
        tags.iter()
            .filter_map(|(_, p)| i.tags.id_of(p).map(|id| (p.clone(), i.tags.subtree(id).into_owned())))
            .collect()
    })?;
    let live = store.with_audience(ws, |i| i.live().clone())?;
    let mut rows = BTreeMap::new();
    for (k, (name, src)) in queries().into_iter().enumerate() {
        if only.is_some_and(|o| o != k + 1) {
            continue;
        }
        let e = expr::parse(&src).with_context(|| src.clone())?;
        // The first evaluation finds no range results or subtree unions
        // kept from an earlier one.
        let mut times = Vec::with_capacity(runs);
        let mut count = 0;
        for _ in 0..runs {
            let t = Instant::now();
            count =
                store.with_audience(ws, |i| i.evaluate(&e, now))?.map_err(|e| anyhow::anyhow!("{e:?}"))?.cardinality();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let first = times.first().copied().unwrap_or(f64::NAN);
        times.sort_by(f64::total_cmp);
        // The index alone, without the freshness check against the database.
        let mut eval_times = store.with_audience(ws, |i| {
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    let n = i.evaluate(&e, now).map(|b| b.cardinality()).unwrap_or(u64::MAX);
                    assert_eq!(n, count);
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect::<Vec<f64>>()
        })?;
        eval_times.sort_by(f64::total_cmp);
        let mut plain_times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let Some(r) = plain(&e, &leaves, &live) else { break };
            let n = r.and_cardinality(&live);
            plain_times.push(t.elapsed().as_secs_f64() * 1000.0);
            ensure!(n == count, "{name}: plain bitmap calls count {n}, the index {count}");
        }
        plain_times.sort_by(f64::total_cmp);
        let plain_p50 =
            if plain_times.is_empty() { "-".to_owned() } else { format!("{:.3}", percentile(&plain_times, 0.5)) };
        let sql = format!(
            "SELECT COUNT(*) FROM contacts c WHERE c.workspace_id = {ws} AND c.deleted_at IS NULL AND {}",
            to_sql(&e, ws, &tags, now)
        );
        let mut sql_times = Vec::new();
        let mut sql_count = 0;
        for _ in 0..sql_runs {
            let t = Instant::now();
            sql_count = store.db.conn()?.query_one(&sql, params![])?.i64(0) as u64;
            sql_times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        sql_times.sort_by(f64::total_cmp);
        let sql_ms = sql_times.get(sql_times.len() / 2).copied().unwrap_or(f64::NAN);
        ensure!(sql_runs == 0 || sql_count == count, "{name}: SQL counts {sql_count}, the index {count}\n{sql}");
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        println!(
            "  {:<30} {count:>10} {first:>9.3} {p50:>9.3} {p99:>9.3} {:>9.3} {plain_p50:>9} {sql_ms:>11.1} {:>8.0}×",
            format!("{}. {name}", k + 1),
            percentile(&eval_times, 0.5),
            sql_ms / p50
        );
        rows.insert(k, (p50, p99, sql_ms, e.n_terms(), first));
    }
    let four: Vec<f64> = rows.values().filter(|r| r.3 >= 4).map(|r| r.0).collect();
    let worst_ratio = rows.values().map(|r| r.2 / r.0).fold(f64::INFINITY, f64::min);
    println!(
        "  4-term expressions: worst p50 {:.3} ms, worst first evaluation {:.3} ms; slowest p99 of all {:.3} ms; smallest SQL/index ratio {:.0}×",
        four.iter().copied().fold(0.0, f64::max),
        rows.values().filter(|r| r.3 >= 4).map(|r| r.4).fold(0.0, f64::max),
        rows.values().map(|r| r.1).fold(0.0, f64::max),
        worst_ratio
    );
    Ok(())
}
