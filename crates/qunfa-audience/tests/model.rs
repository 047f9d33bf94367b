//! Property test: the bitmap index agrees with a naive set-based model on
//! random contacts, random changes and random expressions.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use qunfa_audience::{
    expr::{parse_date, CmpOp, DeptRef, Expr, Literal, Pred},
    index::{IndexBuilder, WorkspaceIndex},
};
use qunfa_core::contact::AttrValue;

const WS: i64 = 7;
const NOW: i64 = 1_795_219_200_000; // 2026-11-21
const CITIES: [&str; 4] = ["上海", "杭州", "北京", "Shanghai"];
const DATES: [&str; 5] = ["2026-11-01", "2026-08-15", "2025-01-01", "2026-11-20T12:00", "not a date"];
const TAGS: [&str; 5] = ["A", "A/x", "A/x/1", "B", "C"];

#[derive(Debug, Clone)]
struct Contact {
    idx: u32,
    live: bool,
    attrs: BTreeMap<String, AttrValue>,
    tags: BTreeSet<usize>,
    dept: Option<usize>,
}

fn value() -> impl Strategy<Value = (String, AttrValue)> {
    prop_oneof![
        (0..CITIES.len()).prop_map(|i| ("city".to_owned(), AttrValue::Text(CITIES[i].to_owned()))),
        prop_oneof![Just(-2.5), Just(0.0), Just(3.0), Just(100.0), Just(5000.0), Just(5000.5), Just(1e9)]
            .prop_map(|n| ("spend".to_owned(), AttrValue::Number(n))),
        (0..DATES.len()).prop_map(|i| ("last_active".to_owned(), AttrValue::Text(DATES[i].to_owned()))),
        any::<bool>().prop_map(|b| ("vip".to_owned(), AttrValue::Bool(b))),
        // Many distinct values: range tests cover some bins in part.
        (0..60i32).prop_map(|n| ("score".to_owned(), AttrValue::Number(f64::from(n)))),
        // A mixed attribute: sometimes a number, sometimes a text.
        prop_oneof![Just(AttrValue::Number(7.0)), Just(AttrValue::Text("7".into())), Just(AttrValue::Bool(false))]
            .prop_map(|v| ("mixed".to_owned(), v)),
    ]
}

fn contact() -> impl Strategy<Value = Contact> {
    (
        // Ids on both sides of a 65,536 chunk boundary.
        prop_oneof![0u32..200, 65_500u32..65_600, 131_000u32..131_100],
        prop::bool::weighted(0.9),
        prop::collection::vec(value(), 0..5),
        prop::collection::btree_set(0..TAGS.len(), 0..3),
        prop::option::of(0..3usize),
    )
        .prop_map(|(idx, live, attrs, tags, dept)| Contact {
            idx,
            live,
            attrs: attrs.into_iter().collect(),
            tags,
            dept,
        })
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        (0..CITIES.len()).prop_map(|i| Literal::Text(CITIES[i].to_owned())),
        Just(Literal::Text("7".into())),
        Just(Literal::Text("2026-11-01".into())),
        prop_oneof![Just(-3.0), Just(0.0), Just(3.0), Just(5000.0), Just(5000.2), Just(7.0), Just(1e10)]
            .prop_map(Literal::Number),
        (-1..62i32).prop_map(|n| Literal::Number(f64::from(n) / 2.0 + 15.0)),
        any::<bool>().prop_map(Literal::Bool),
        (0..4usize).prop_map(|i| Literal::Date(parse_date(DATES[i]).unwrap())),
        prop_oneof![Just(-30i64), Just(-1), Just(-400)].prop_map(|d| Literal::Relative(d * 86_400_000)),
    ]
}

fn op() -> impl Strategy<Value = CmpOp> {
    prop_oneof![Just(CmpOp::Eq), Just(CmpOp::Ne), Just(CmpOp::Lt), Just(CmpOp::Le), Just(CmpOp::Gt), Just(CmpOp::Ge)]
}

fn leaf() -> impl Strategy<Value = Expr> {
    let key = prop_oneof![Just("city"), Just("spend"), Just("last_active"), Just("vip"), Just("score"), Just("mixed")];
    prop_oneof![
        Just(Expr::All),
        (0..TAGS.len()).prop_map(|i| Expr::Tag { path: TAGS[i].to_owned(), pos: 0 }),
        (0..3i64).prop_map(|d| Expr::Dept { dept: DeptRef::Id(d + 100), pos: 0 }),
        prop::collection::vec(prop_oneof![0u32..200, 65_500u32..65_600], 1..4)
            .prop_map(|v| Expr::Ids(v.into_iter().map(|i| ((WS as u64) << 32) | u64::from(i)).collect())),
        (key.clone(), op(), literal())
            .prop_filter("ordering needs a number or date", |(_, op, l)| {
                matches!(op, CmpOp::Eq | CmpOp::Ne) || !matches!(l, Literal::Text(_) | Literal::Bool(_))
            })
            .prop_map(|(k, op, l)| Expr::Attr { key: k.to_owned(), pred: Pred::Cmp(op, l), pos: 0 }),
        (key.clone(), prop::collection::vec(literal(), 1..3)).prop_map(|(k, l)| Expr::Attr {
            key: k.to_owned(),
            pred: Pred::In(l),
            pos: 0
        }),
        (key.clone(), prop_oneof![Just("海"), Just("SHANG"), Just("2026")]).prop_map(|(k, n)| Expr::Attr {
            key: k.to_owned(),
            pred: Pred::Contains(n.to_owned()),
            pos: 0
        }),
        key.prop_map(|k| Expr::Attr { key: k.to_owned(), pred: Pred::Exists, pos: 0 }),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

// The model: plain per-contact evaluation.

fn model_value(v: &AttrValue, op: CmpOp, l: &Literal) -> bool {
    let ord = |a: f64, b: f64| match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    };
    match (v, l) {
        (AttrValue::Text(s), Literal::Text(t)) if parse_date(t).is_some() => {
            model_value(v, op, &Literal::Date(parse_date(t).unwrap()))
        }
        (AttrValue::Text(s), Literal::Text(_)) if parse_date(s).is_some() => false,
        (AttrValue::Text(s), Literal::Text(t)) => (op == CmpOp::Eq && s == t) || (op == CmpOp::Ne && s != t),
        (AttrValue::Bool(a), Literal::Bool(b)) => (op == CmpOp::Eq && a == b) || (op == CmpOp::Ne && a != b),
        (AttrValue::Number(a), Literal::Number(b)) => ord(*a, *b),
        (AttrValue::Text(s), Literal::Date(ms)) => parse_date(s).is_some_and(|d| ord(d as f64, *ms as f64)),
        (AttrValue::Text(s), Literal::Relative(d)) => parse_date(s).is_some_and(|x| ord(x as f64, (NOW + d) as f64)),
        _ => false,
    }
}

fn tag_covers(tag: &str, member_of: usize) -> bool {
    let m = TAGS[member_of];
    m == tag || m.starts_with(&format!("{tag}/"))
}

fn model(c: &Contact, e: &Expr) -> bool {
    match e {
        Expr::All => true,
        Expr::Tag { path, .. } => c.tags.iter().any(|t| tag_covers(path, *t)),
        // Departments 100 ⊃ 101 ⊃ 102.
        Expr::Dept { dept: DeptRef::Id(d), .. } => c.dept.is_some_and(|cd| cd as i64 + 100 >= *d),
        Expr::Dept { .. } | Expr::Segment { .. } => false,
        Expr::Ids(ids) => ids.iter().any(|id| (id & 0xFFFF_FFFF) as u32 == c.idx),
        Expr::Attr { key, pred, .. } => {
            let Some(v) = c.attrs.get(key) else { return false };
            match pred {
                Pred::Exists => true,
                // Texts that are dates are dates: `contains` does not look into them.
                Pred::Contains(n) => {
                    matches!(v, AttrValue::Text(s) if parse_date(s).is_none() && s.to_lowercase().contains(&n.to_lowercase()))
                }
                Pred::In(list) => list.iter().any(|l| model_value(v, CmpOp::Eq, l)),
                Pred::Cmp(op, l) => model_value(v, *op, l),
            }
        }
        Expr::Not(inner) => !model(c, inner),
        Expr::And(v) => v.iter().all(|x| model(c, x)),
        Expr::Or(v) => v.iter().any(|x| model(c, x)),
    }
}

fn build(contacts: &[Contact], split: usize) -> WorkspaceIndex {
    // The first `split` contacts are built in; the rest arrive as changes.
    let mut b = IndexBuilder::new(WS);
    // Every attribute name exists (the model treats unknown names as empty;
    // the index refuses them, which the unit tests cover).
    b.add(999_999, [("city", &AttrValue::Text("x".into()))]);
    for c in contacts[..split].iter().filter(|c| c.live) {
        b.add(c.idx, c.attrs.iter().map(|(k, v)| (k.as_str(), v)));
    }
    let mut w = b.build();
    for key in ["spend", "last_active", "vip", "score", "mixed"] {
        let mut a = BTreeMap::new();
        a.insert(key.to_owned(), AttrValue::Number(0.0));
        w.set_contact(999_998, true, &a);
    }
    w.set_contact(999_998, false, &BTreeMap::new());
    w.set_contact(999_999, false, &BTreeMap::new());
    for c in &contacts[split..] {
        w.set_contact(c.idx, c.live, &c.attrs);
    }
    let nodes: Vec<(i64, Option<i64>, String)> = TAGS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let parent = p.rsplit_once('/').map(|(parent, _)| TAGS.iter().position(|t| *t == parent).unwrap() as i64);
            (i as i64, parent, (*p).to_owned())
        })
        .collect();
    w.tags.set_nodes(&nodes, true);
    w.departments.set_nodes(
        &[(100, None, "总部".into()), (101, Some(100), "华东".into()), (102, Some(101), "上海".into())],
        false,
    );
    for (i, _) in TAGS.iter().enumerate() {
        let mut per_chunk: BTreeMap<u32, qunfa_audience::Bitmap> = BTreeMap::new();
        for c in contacts.iter().filter(|c| c.tags.contains(&i)) {
            per_chunk.entry(c.idx >> 16).or_default().add(c.idx);
        }
        for chunk in 0..3 {
            w.tags.set_chunk(i as i64, chunk, &per_chunk.remove(&chunk).unwrap_or_default());
        }
    }
    for d in 0..3usize {
        let bits: qunfa_audience::Bitmap = contacts.iter().filter(|c| c.dept == Some(d)).map(|c| c.idx).collect();
        for chunk in 0..3 {
            let part: qunfa_audience::Bitmap = bits.iter().filter(|i| i >> 16 == chunk).collect();
            w.departments.set_chunk(100 + d as i64, chunk, &part);
        }
    }
    w
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn index_agrees_with_the_model(
        raw in prop::collection::vec(contact(), 0..60),
        split_at in 0usize..=100,
        exprs in prop::collection::vec(expr(), 1..6),
    ) {
        // One record per id: the last one wins, as it would in the database.
        let mut by_id: BTreeMap<u32, Contact> = BTreeMap::new();
        for c in raw {
            by_id.insert(c.idx, c);
        }
        let contacts: Vec<Contact> = by_id.into_values().collect();
        let split = contacts.len() * split_at / 100;
        let w = build(&contacts, split);
        for e in &exprs {
            let got: Vec<u32> = w.evaluate(e, NOW).unwrap().iter().collect();
            let want: Vec<u32> = contacts.iter().filter(|c| c.live && model(c, e)).map(|c| c.idx).collect();
            prop_assert_eq!(got, want, "{:?}", e);
        }
    }
}
