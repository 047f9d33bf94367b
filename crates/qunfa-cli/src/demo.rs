//! Demo workspaces for `serve --demo`: an enterprise with 10,000 contacts,
//! departments, nested tags and attributes, and a personal account with a few
//! friends. Seeded once per database; every start issues fresh demo keys.

use anyhow::Context;
use qunfa_core::{
    contact::{ContactInput, RawContact},
    workspace::{Name, Role, WorkspaceKind},
    Policy,
};
use qunfa_store::{now_millis, Store};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Keys printed for the tour.
pub struct DemoKeys {
    pub enterprise_id: i64,
    pub enterprise_owner: String,
    pub enterprise_sender: String,
    pub enterprise_reviewer: String,
    pub personal_id: i64,
    pub personal_owner: String,
    /// A personal draft that preflight refuses, to see it explain itself.
    pub blocked_draft: i64,
    /// The console password of the demo logins (owner, sender, reviewer, zhangsan).
    pub console_password: String,
}

const SETTING: &str = "demo_workspaces";
const DAY: i64 = 86_400_000;

const SURNAMES: [&str; 12] = ["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙"];
const GIVEN: [&str; 12] = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "军", "杰", "婷"];
const CITIES: [(&str, &str); 6] =
    [("上海", "华东"), ("杭州", "华东"), ("广州", "华南"), ("深圳", "华南"), ("北京", "华北"), ("天津", "华北")];

fn contact(json: serde_json::Value) -> anyhow::Result<ContactInput> {
    let raw: RawContact = serde_json::from_value(json)?;
    ContactInput::parse(raw).map_err(|e| anyhow::anyhow!("demo contact: {} {:?}", e.field, e.code))
}

/// Seeds the demo workspaces if this database has none, and returns fresh keys.
pub fn seed(store: &Store, policy: &Policy) -> anyhow::Result<DemoKeys> {
    let now = now_millis();
    let ids = match store.setting(SETTING)? {
        Some(v) => v,
        None => {
            let v = create(store, policy, now).context("seeding the demo workspaces")?;
            store.setting_set(SETTING, &v)?;
            v
        }
    };
    let ids: Vec<i64> = ids.split(',').filter_map(|s| s.parse().ok()).collect();
    anyhow::ensure!(ids.len() == 5, "demo setting is corrupt");
    let (ent, personal) = (ids[0], ids[3]);
    let blocked_draft = match store.setting(BLOCKED_SETTING)?.and_then(|v| v.parse().ok()) {
        Some(id) => id,
        None => {
            let id = blocked_draft(store, personal, now)?;
            store.setting_set(BLOCKED_SETTING, &id.to_string())?;
            id
        }
    };
    let personal_owner = store.members(personal)?.first().map(|m| m.id).context("personal owner")?;
    // Console logins, with a password new at every start (like the keys).
    let console_password = format!("demo-{}", &qunfa_store::new_secret("")[..12]);
    for (ws, member, login) in [
        (ent, ids[1], "owner"),
        (ent, ids[2], "sender"),
        (ent, ids[4], "reviewer"),
        (personal, personal_owner, "zhangsan"),
    ] {
        match qunfa_server::set_login_direct(store, ws, member, login, &console_password, now) {
            Ok(()) => {}
            // Another member of this database has the name: the demo does
            // without that login rather than refuse to start.
            Err(e) if e.code == qunfa_core::Code::LoginTaken => {
                tracing::warn!(login, "demo console login not set: the name belongs to another member");
            }
            Err(e) => anyhow::bail!("demo login {login}: {}", e.message),
        }
    }
    Ok(DemoKeys {
        enterprise_id: ent,
        enterprise_owner: store.issue_key(ent, ids[1], "demo", now)?.secret,
        enterprise_sender: store.issue_key(ent, ids[2], "demo", now)?.secret,
        enterprise_reviewer: store.issue_key(ent, ids[4], "demo", now)?.secret,
        personal_id: personal,
        personal_owner: store.issue_key(personal, personal_owner, "demo", now)?.secret,
        blocked_draft,
        console_password,
    })
}

const BLOCKED_SETTING: &str = "demo_blocked_draft";

/// A draft of the personal account that breaks two rules at once: four tags
/// combined and a fraud phrase (`qunfa explain ID` prints why, and how to fix each).
fn blocked_draft(store: &Store, personal: i64, now: i64) -> anyhow::Result<i64> {
    use qunfa_core::{broadcast::Priority, contact::Channel, message::RawContent, tag::TagPath};
    let tag = |p: &str| -> anyhow::Result<i64> { Ok(store.tag_by_path(personal, &TagPath::parse(p)?)?) };
    let ids = vec![tag("同事")?, tag("家人")?, tag("客户")?, tag("同学")?];
    let owner = store.members(personal)?.first().map(|m| m.id).context("personal owner")?;
    let raw = RawContent {
        content_type: "text".into(),
        text: Some("兼职刷单，日结三百，轻松赚钱！转发给好友即可领取红包。".into()),
        ..Default::default()
    };
    let new = qunfa_store::broadcasts::NewBroadcast {
        content_json: qunfa_store::json::content_to_json(&raw),
        audience_json: qunfa_store::json::audience_to_json(&qunfa_audience::AudienceSpec::Tags(ids)),
        channels: vec![Channel::Inbox],
        priority: Priority::Broadcast,
        client_msg_id: None,
        request_hash: "demo-blocked-draft".into(),
        ttl_ms: None,
        fallback: Vec::new(),
    };
    Ok(store.create_broadcast(personal, owner, &new, "demo", now)?.0.id)
}

fn create(store: &Store, policy: &Policy, now: i64) -> anyhow::Result<String> {
    let mut rng = StdRng::seed_from_u64(42);
    // Enterprise.
    let (ent, owner_key) = store.create_workspace(
        &Name::parse("星辰零售 Xingchen Retail")?,
        WorkspaceKind::Enterprise,
        None,
        "demo",
        now - 60 * DAY,
    )?;
    let (sender, _) =
        store.create_member(ent.id, &Name::parse("王小明 (marketing)")?, Role::Sender, now - 60 * DAY, "demo", now)?;
    let (reviewer, _) =
        store.create_member(ent.id, &Name::parse("李经理 (reviewer)")?, Role::Reviewer, now - 90 * DAY, "demo", now)?;
    let hq = store.create_department(ent.id, &Name::parse("总部")?, None, "demo", now)?;
    let mut regions = std::collections::HashMap::new();
    for region in ["华东", "华南", "华北"] {
        let d = store.create_department(ent.id, &Name::parse(&format!("{region}区"))?, Some(hq.id), "demo", now)?;
        regions.insert(region, d.id);
    }
    let mut contacts = Vec::with_capacity(10_000);
    let mut by_region: std::collections::HashMap<&str, Vec<u32>> = std::collections::HashMap::new();
    for i in 0..10_000u32 {
        let (city, region) = CITIES[rng.gen_range(0..CITIES.len())];
        let spend: u32 = rng.gen_range(0..20_000);
        let level = if spend > 15_000 {
            "金牌"
        } else if spend > 8_000 {
            "银牌"
        } else {
            "铜牌"
        };
        let mut tags = vec![format!("客户等级/{level}/{region}")];
        if rng.gen_bool(0.3) {
            tags.push(["兴趣/数码", "兴趣/美妆", "兴趣/运动"][rng.gen_range(0..3)].to_owned());
        }
        if rng.gen_bool(0.5) {
            tags.push("渠道/线上".to_owned());
        }
        let name = format!("{}{}", SURNAMES[rng.gen_range(0..12)], GIVEN[rng.gen_range(0..12)]);
        let last_active = now - i64::from(rng.gen_range(0..180u32)) * DAY;
        contacts.push(contact(serde_json::json!({
            "external_id": format!("cust-{i:05}"),
            "name": name,
            "attributes": {
                "city": city, "region": region, "spend": spend, "age": rng.gen_range(18..70),
                "gender": if rng.gen_bool(0.5) { "F" } else { "M" },
                "last_active": chrono_date(last_active), "vip": spend > 15_000,
            },
            "channels": {"email": format!("cust{i}@example.com")},
            "consent": {"inbox": true, "email": rng.gen_bool(0.8)},
            "tags": tags,
        }))?);
        by_region.entry(region).or_default().push(i);
    }
    store.import_contacts(ent.id, &policy.tiers.enterprise, &contacts, "demo", now)?;
    for (region, idxs) in by_region {
        for chunk in idxs.chunks(2000) {
            store.department_members(ent.id, regions[region], chunk, "demo", now)?;
        }
    }
    // Personal.
    let (personal, _) = store.create_workspace(
        &Name::parse("张三的个人号")?,
        WorkspaceKind::Personal,
        None,
        "demo",
        now - 400 * DAY,
    )?;
    let friends: Vec<ContactInput> = (0..150u32)
        .map(|i| {
            let tag = ["同事", "家人", "客户", "同学"][(i % 4) as usize];
            contact(serde_json::json!({
                "external_id": format!("friend-{i:03}"),
                "name": format!("{}{}", SURNAMES[(i % 12) as usize], GIVEN[((i / 12) % 12) as usize]),
                "attributes": {"city": CITIES[(i % 6) as usize].0},
                "tags": [tag],
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    store.import_contacts(personal.id, &policy.tiers.personal, &friends, "demo", now)?;
    let _ = owner_key;
    let ent_owner = store.members(ent.id)?.first().map(|m| m.id).context("owner")?;
    Ok(format!("{},{},{},{},{}", ent.id, ent_owner, sender.id, personal.id, reviewer.id))
}

/// The civil date (UTC) of a moment, `YYYY-MM-DD`.
fn chrono_date(ms: i64) -> String {
    qunfa_audience::expr::format_date(ms.div_euclid(DAY) * DAY)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::chrono_date(0), "1970-01-01");
        assert_eq!(super::chrono_date(1_795_276_800_000), "2026-11-21");
    }
}
