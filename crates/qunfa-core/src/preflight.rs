//! Preflight: "why can't I send?" One pure function from a proposed send to
//! every verdict that would block, delay or hold it for review, so preflight
//! and send share one code path.

use crate::{contact::Channel, message::Content, policy::Policy, workspace::WorkspaceKind, Code, Millis};

/// How serious a verdict is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The send is refused until the cause is fixed.
    Block,
    /// The send needs a reviewer's approval before it goes out.
    Review,
    /// The send goes out later by itself.
    Delay,
    /// Worth knowing; nothing stops.
    Warn,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Review => "review",
            Self::Delay => "delay",
            Self::Warn => "warn",
        }
    }
}

/// One reason a send is blocked, held or delayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    pub message_zh: String,
    pub hint: String,
    /// When the cause clears by itself.
    pub clears_at: Option<Millis>,
    /// The limit that applies and the value found, where there is one.
    pub limit: Option<u64>,
    pub actual: Option<u64>,
}

impl Verdict {
    /// A verdict with the code's hint and no limit or clearing time.
    pub fn new(code: Code, severity: Severity, message: String, message_zh: String) -> Self {
        Self {
            code,
            severity,
            message,
            message_zh,
            hint: code.hint().to_owned(),
            clears_at: None,
            limit: None,
            actual: None,
        }
    }
    /// When the cause clears by itself.
    pub fn clears(mut self, at: Millis) -> Self {
        self.clears_at = Some(at);
        self
    }
    /// The limit that applies and the value found.
    pub fn limits(mut self, limit: u64, actual: u64) -> Self {
        self.limit = Some(limit);
        self.actual = Some(actual);
        self
    }
}

/// The shape of a send's audience, which the tier rules look at.
#[derive(Debug, Clone, PartialEq)]
pub enum AudienceShape {
    /// Explicitly picked contacts (ids given).
    Contacts { n_ids: usize },
    /// One tag (with its subtree).
    Tag,
    /// Several tags combined.
    Tags { n_tags: usize },
    /// One department (with its subtree).
    Department,
    /// Every contact of the workspace.
    All,
    /// An expression combining `n_terms` conditions (tags, departments,
    /// attributes, ids).
    Expression { n_terms: usize },
    /// The frozen audience of an earlier send (a correction notice): its
    /// shape was judged when that send was checked.
    Frozen,
}

/// Everything the rules need to know about a proposed send.
#[derive(Debug, Clone)]
pub struct SendProposal<'a> {
    pub kind: WorkspaceKind,
    pub plan: Option<&'a str>,
    pub content: &'a Content,
    /// Template variables that no contact of the workspace has.
    pub unknown_variables: Vec<String>,
    pub audience: AudienceShape,
    /// Most picked contacts this send may name: the policy's `api_batch_max`,
    /// or its `compat_batch_max` for a send of the WeChat-compatible API.
    pub batch_max: usize,
    pub n_recipients: u64,
    pub channels: &'a [Channel],
    /// Channels the workspace can deliver through (the inbox, and the channels it set up).
    pub available_channels: &'a [Channel],
    /// Mass sends this sender already made today (local day of the policy).
    pub sends_today: u32,
    pub now: Millis,
}

/// Every verdict on `proposal`, most severe first. An empty list means the
/// send may go out at once.
pub fn preflight(policy: &Policy, p: &SendProposal<'_>) -> Vec<Verdict> {
    let tier = policy.tier(p.kind);
    let kind = p.kind.as_str();
    let kind_zh = match p.kind {
        WorkspaceKind::Personal => "个人号",
        WorkspaceKind::Enterprise => "企业号",
        WorkspaceKind::Api => "第三方（API）账号",
    };
    let mut out = Vec::new();

    // Content type for this tier.
    let content_type = p.content.content_type();
    if !tier.allows_type(content_type) {
        out.push(Verdict::new(
            Code::ContentTypeNotAllowed,
            Severity::Block,
            format!(
                "{kind} workspaces cannot send {} messages; allowed: {}.",
                content_type.as_str(),
                tier.content_types.join(", ")
            ),
            format!(
                "{kind_zh}不能发送 {} 类型消息；允许的类型：{}。",
                content_type.as_str(),
                tier.content_types.join("、")
            ),
        ));
    }
    // Text length (the content was parsed with the tier limit already, but a
    // policy change since the draft was written must still be honoured).
    for text in p.content.texts() {
        if text.n_chars() > tier.text_max_chars && content_type != crate::message::ContentType::RichText {
            out.push(
                Verdict::new(
                    Code::TextTooLong,
                    Severity::Block,
                    format!(
                        "The text has {} characters; {kind} workspaces allow {}.",
                        text.n_chars(),
                        tier.text_max_chars
                    ),
                    format!("文字共 {} 个字符，{kind_zh}最多 {} 个。", text.n_chars(), tier.text_max_chars),
                )
                .limits(tier.text_max_chars as u64, text.n_chars() as u64),
            );
        }
    }
    if !p.unknown_variables.is_empty() {
        let list = p.unknown_variables.iter().map(|v| format!("{{{{{v}}}}}")).collect::<Vec<_>>().join(", ");
        out.push(Verdict::new(
            Code::UnknownVariable,
            Severity::Block,
            format!("No contact has the variable(s) {list}."),
            format!("没有联系人具有变量 {list}。"),
        ));
    }

    // Audience shape for this tier.
    match p.audience {
        AudienceShape::Tags { n_tags } if n_tags > 1 && !tier.combined_audiences => out.push(Verdict::new(
            Code::AudienceCombination,
            Severity::Block,
            format!("This send combines {n_tags} tags; {kind} workspaces send to one tag or to picked contacts."),
            format!("此次群发组合了 {n_tags} 个标签；{kind_zh}只能选择单个标签或手动挑选联系人，不能跨标签组合。"),
        )),
        AudienceShape::Expression { n_terms } if !tier.combined_audiences => out.push(Verdict::new(
            Code::AudienceCombination,
            Severity::Block,
            format!(
                "This audience is an expression of {n_terms} condition(s); {kind} workspaces send to one tag or to picked contacts."
            ),
            format!("此次群发的发送对象是包含 {n_terms} 个条件的表达式；{kind_zh}只能选择单个标签或手动挑选联系人。"),
        )),
        AudienceShape::Department if !tier.departments => out.push(Verdict::new(
            Code::DepartmentNotAllowed,
            Severity::Block,
            format!("{kind} workspaces have no departments."),
            format!("{kind_zh}没有部门。"),
        )),
        AudienceShape::Contacts { n_ids } if n_ids > p.batch_max => out.push(
            Verdict::new(
                Code::ApiBatchTooLarge,
                Severity::Block,
                format!("{n_ids} contact ids in one request; at most {}.", p.batch_max),
                format!("单次请求包含 {n_ids} 个联系人 ID，最多 {} 个。", p.batch_max),
            )
            .limits(p.batch_max as u64, n_ids as u64),
        ),
        _ => {}
    }
    if p.n_recipients == 0 {
        out.push(Verdict::new(
            Code::AudienceEmpty,
            Severity::Block,
            "The audience has no recipients.".into(),
            "发送对象为空。".into(),
        ));
    }
    if let Some(limit) = tier.recipient_limit(p.plan) {
        if p.n_recipients > limit {
            out.push(
                Verdict::new(
                    Code::LimitRecipients,
                    Severity::Block,
                    format!(
                        "The audience has {} recipients; {kind} workspaces may send to {limit} at once.",
                        p.n_recipients
                    ),
                    format!("发送对象共 {} 人，{kind_zh}单次群发最多 {} 人。", p.n_recipients, limit),
                )
                .limits(limit, p.n_recipients),
            );
        }
    }

    // Channels.
    for channel in p.channels {
        if !p.available_channels.contains(channel) {
            out.push(Verdict::new(
                Code::ChannelNotConfigured,
                Severity::Block,
                format!("The {} channel is not set up for this workspace.", channel.as_str()),
                format!("此工作区尚未配置 {} 渠道。", channel.as_str()),
            ));
        }
    }

    // Daily quota.
    if let Some(per_day) = tier.sends_per_day {
        if p.sends_today >= per_day {
            let (_, next_day) = policy.day_bounds(p.now);
            let mut v = Verdict::new(
                Code::LimitDailySends,
                Severity::Block,
                format!("{} of {per_day} mass sends used today; the quota resets at local midnight.", p.sends_today),
                format!("今日已群发 {} 次（上限 {per_day} 次），零点后恢复。", p.sends_today),
            )
            .limits(u64::from(per_day), u64::from(p.sends_today));
            v.clears_at = Some(next_day);
            out.push(v);
        }
    }

    // Approval.
    if let Some(above) = tier.approval_above() {
        if p.n_recipients > above {
            out.push(
                Verdict::new(
                    Code::ApprovalRequired,
                    Severity::Review,
                    format!("{} recipients is above {above}: the send waits for approval.", p.n_recipients),
                    format!("发送对象 {} 人超过 {above} 人，需审批后发送。", p.n_recipients),
                )
                .limits(above, p.n_recipients),
            );
        }
    }

    out.sort_by_key(|v| v.severity);
    out
}

/// Whether the verdicts refuse the send.
pub fn blocks(verdicts: &[Verdict]) -> bool {
    verdicts.iter().any(|v| v.severity == Severity::Block)
}

/// Whether the verdicts hold the send for approval.
pub fn needs_review(verdicts: &[Verdict]) -> bool {
    verdicts.iter().any(|v| v.severity == Severity::Review)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::RawContent;

    fn content(kind: &str) -> Content {
        let raw = match kind {
            "file" => RawContent {
                content_type: "file".into(),
                media_id: Some("a".repeat(64)),
                filename: Some("报价单.pdf".into()),
                ..Default::default()
            },
            _ => RawContent { content_type: "text".into(), text: Some("你好".into()), ..Default::default() },
        };
        Content::parse(&raw, 2048).unwrap()
    }

    fn codes(
        kind: WorkspaceKind,
        content: &Content,
        audience: AudienceShape,
        n: u64,
        sends_today: u32,
    ) -> Vec<(&'static str, &'static str)> {
        let policy = Policy::builtin();
        let p = SendProposal {
            kind,
            plan: None,
            content,
            unknown_variables: vec![],
            audience,
            batch_max: policy.api_batch_max,
            n_recipients: n,
            channels: &[Channel::Inbox],
            available_channels: &[Channel::Inbox],
            sends_today,
            now: 1_795_276_799_000,
        };
        preflight(&policy, &p).iter().map(|v| (v.code.as_str(), v.severity.as_str())).collect()
    }

    #[test]
    fn personal_rules_all_at_once() {
        let file = content("file");
        let got = codes(WorkspaceKind::Personal, &file, AudienceShape::Tags { n_tags: 2 }, 350, 5);
        assert_eq!(
            got,
            [
                ("QF-CONTENT-TYPE-NOT-ALLOWED", "block"),
                ("QF-AUDIENCE-COMBINATION", "block"),
                ("QF-LIMIT-RECIPIENTS", "block"),
                ("QF-LIMIT-DAILY-SENDS", "block"),
            ]
        );
    }

    #[test]
    fn personal_within_limits_passes() {
        let text = content("text");
        assert!(codes(WorkspaceKind::Personal, &text, AudienceShape::Tag, 200, 4).is_empty());
        assert!(codes(WorkspaceKind::Personal, &text, AudienceShape::Contacts { n_ids: 3 }, 3, 0).is_empty());
    }

    #[test]
    fn enterprise_needs_approval_above_500() {
        let text = content("file");
        assert!(codes(WorkspaceKind::Enterprise, &text, AudienceShape::Tags { n_tags: 3 }, 500, 99).is_empty());
        assert_eq!(
            codes(WorkspaceKind::Enterprise, &text, AudienceShape::All, 501, 0),
            [("QF-APPROVAL-REQUIRED", "review")]
        );
    }

    #[test]
    fn empty_audience_and_clears_at() {
        let policy = Policy::builtin();
        let text = content("text");
        let p = SendProposal {
            kind: WorkspaceKind::Personal,
            plan: None,
            content: &text,
            unknown_variables: vec!["shoe_size".into()],
            audience: AudienceShape::Contacts { n_ids: 2001 },
            batch_max: policy.api_batch_max,
            n_recipients: 0,
            channels: &[Channel::Inbox, Channel::Sms],
            available_channels: &[Channel::Inbox],
            sends_today: 5,
            now: 1_795_276_799_000,
        };
        let v = preflight(&policy, &p);
        let got: Vec<_> = v.iter().map(|v| v.code.as_str()).collect();
        assert_eq!(
            got,
            [
                "QF-TEMPLATE-UNKNOWN-VARIABLE",
                "QF-LIMIT-API-BATCH",
                "QF-AUDIENCE-EMPTY",
                "QF-CHANNEL-NOT-CONFIGURED",
                "QF-LIMIT-DAILY-SENDS"
            ]
        );
        assert_eq!(v.last().unwrap().clears_at, Some(1_795_276_800_000));
        assert!(blocks(&v));
    }
}
