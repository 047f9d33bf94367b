//! Stable error and verdict codes.
//!
//! Every error the API returns and every preflight verdict carries one of these
//! codes. The code string never changes once published; the texts may improve.
//! Each code has an English and a Chinese message and a hint that says how to
//! fix the problem.

macro_rules! codes {
    ($( $variant:ident = $code:literal, $en:literal, $zh:literal, $hint:literal; )*) => {
        /// A stable code, such as `QF-LIMIT-RECIPIENTS`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code { $( $variant, )* }

        impl Code {
            /// Every code, in catalogue order.
            pub const ALL: &'static [Code] = &[ $( Code::$variant, )* ];

            /// The code as it appears on the wire, e.g. `QF-LIMIT-RECIPIENTS`.
            pub fn as_str(self) -> &'static str {
                match self { $( Code::$variant => $code, )* }
            }
            /// Default English message.
            pub fn message_en(self) -> &'static str {
                match self { $( Code::$variant => $en, )* }
            }
            /// Default Chinese message.
            pub fn message_zh(self) -> &'static str {
                match self { $( Code::$variant => $zh, )* }
            }
            /// How to fix it.
            pub fn hint(self) -> &'static str {
                match self { $( Code::$variant => $hint, )* }
            }
            /// Looks a code up by its wire string.
            pub fn from_wire(s: &str) -> Option<Code> {
                match s { $( $code => Some(Code::$variant), )* _ => None }
            }
        }
    };
}

codes! {
    // Requests.
    BadJson = "QF-BAD-JSON", "The request body is not valid JSON for this endpoint.", "请求体不是此接口可接受的 JSON。", "Check the body against /openapi.json: field names, types and required fields.";
    BadRequest = "QF-BAD-REQUEST", "The request is malformed.", "请求格式错误。", "Check the parameters against /openapi.json.";
    BadCursor = "QF-BAD-CURSOR", "The pagination cursor is not valid.", "分页游标无效。", "Pass back the next_cursor value of the previous page unchanged.";
    Unauthenticated = "QF-AUTH-REQUIRED", "A valid API key is required.", "需要有效的 API 密钥。", "Send `Authorization: Bearer <key>` with a key issued for this workspace.";
    Forbidden = "QF-AUTH-FORBIDDEN", "Your role does not allow this action.", "您的角色无权执行此操作。", "Ask a workspace owner or admin for a key with the needed role.";
    NotFound = "QF-NOT-FOUND", "No such resource in this workspace.", "此工作区中不存在该资源。", "Check the id; ids of other workspaces are not visible.";
    Conflict = "QF-STATE-CONFLICT", "The resource is not in a state that allows this action.", "资源当前状态不允许此操作。", "Fetch the resource to see its state.";
    Duplicate = "QF-DUPLICATE", "A resource with this identity already exists.", "已存在相同标识的资源。", "Use the existing resource, or choose another identifier.";
    PayloadTooLarge = "QF-PAYLOAD-TOO-LARGE", "The request body is too large.", "请求体过大。", "Split the upload into smaller parts.";
    Internal = "QF-INTERNAL", "Internal error.", "内部错误。", "Retry later; if it persists, report it with the time of the request.";
    Unavailable = "QF-UNAVAILABLE", "The service is temporarily unavailable.", "服务暂时不可用。", "Retry after the time in Retry-After.";
    // Values.
    InvalidName = "QF-INVALID-NAME", "The name is empty or too long.", "名称为空或过长。", "Use 1 to 128 characters.";
    InvalidKind = "QF-INVALID-KIND", "Unknown workspace kind.", "未知的工作区类型。", "Use personal, enterprise or api.";
    InvalidRole = "QF-INVALID-ROLE", "Unknown role.", "未知的角色。", "Use owner, admin, sender, reviewer, auditor or viewer.";
    InvalidExternalId = "QF-INVALID-EXTERNAL-ID", "The external id is empty, too long or contains control characters.", "外部 ID 为空、过长或包含控制字符。", "Use 1 to 128 printable characters.";
    InvalidAttribute = "QF-INVALID-ATTRIBUTE", "A profile attribute is invalid.", "联系人属性无效。", "Attribute keys are 1-64 letters, digits or _; values are strings, numbers or booleans; at most 64 attributes.";
    InvalidEmail = "QF-INVALID-EMAIL", "The email address is not valid.", "邮箱地址无效。", "Use an address such as name@example.com.";
    InvalidPhone = "QF-INVALID-PHONE", "The phone number is not valid.", "手机号无效。", "Use digits with an optional leading +, 6 to 20 digits.";
    InvalidUrl = "QF-INVALID-URL", "The URL is not valid.", "URL 无效。", "Use an absolute http:// or https:// URL.";
    InvalidChannel = "QF-INVALID-CHANNEL", "Unknown channel.", "未知的渠道。", "Use inbox, email, webhook, sms or wecom.";
    InvalidTagPath = "QF-INVALID-TAG-PATH", "The tag path is not valid.", "标签路径无效。", "Use 1 to 3 non-empty levels separated by /, each at most 32 characters.";
    TagTooDeep = "QF-TAG-TOO-DEEP", "Tags have at most 3 levels.", "标签最多 3 级。", "Shorten the path to 3 levels, e.g. 客户等级/金牌/华东.";
    TagNested = "QF-TAG-NESTED-NOT-ALLOWED", "Personal workspaces have flat tags only.", "个人工作区只支持单级标签。", "Use a tag without /, or move to an enterprise workspace.";
    InvalidDepartment = "QF-INVALID-DEPARTMENT", "The department is not valid.", "部门无效。", "Give a name of 1 to 64 characters and an existing parent_id.";
    DepartmentNotAllowed = "QF-DEPARTMENT-NOT-ALLOWED", "Departments exist only in enterprise workspaces.", "只有企业工作区才有部门。", "Use tags, or move to an enterprise workspace.";
    TextEmpty = "QF-CONTENT-EMPTY", "The message has no text.", "消息内容为空。", "Write the message text.";
    TextTooLong = "QF-CONTENT-TOO-LONG", "The text is longer than the tier allows.", "文字超出当前账号类型允许的长度。", "Shorten the text; the limit is in the details.";
    InvalidContent = "QF-INVALID-CONTENT", "The message content is incomplete or invalid.", "消息内容不完整或无效。", "Check the required fields of this message type in /openapi.json.";
    ContentTypeNotAllowed = "QF-CONTENT-TYPE-NOT-ALLOWED", "This message type is not available for this kind of workspace.", "当前账号类型不支持此消息类型。", "Use text, image, link or miniprogram; file and rich text need an enterprise workspace.";
    MediaNotFound = "QF-MEDIA-NOT-FOUND", "The referenced media was not uploaded to this workspace.", "引用的素材不存在于此工作区。", "Upload it with POST /v1/media and use the returned media_id.";
    UnknownVariable = "QF-TEMPLATE-UNKNOWN-VARIABLE", "The message uses a variable no contact has.", "消息使用了不存在的变量。", "Use {{name}}, {{external_id}} or an attribute key that contacts have; give a default with {{key|default}}.";
    TemplateSyntax = "QF-TEMPLATE-SYNTAX", "The message has an unclosed or empty {{variable}}.", "消息中的 {{变量}} 未闭合或为空。", "Close every {{ with }}; write a literal {{ as {{{{.";
    // Audiences and import.
    AudienceEmpty = "QF-AUDIENCE-EMPTY", "The audience has no recipients.", "发送对象为空。", "Pick a tag, department or contacts that exist and are not deleted.";
    AudienceInvalid = "QF-AUDIENCE-INVALID", "The audience is not valid.", "发送对象无效。", "Give exactly one of contact_ids, tag, department or all.";
    AudienceSyntax = "QF-AUDIENCE-SYNTAX", "The audience expression is not valid.", "受众表达式有语法错误。", "Fix the expression at the position given (in characters from 0); docs/audiences.md has the syntax with examples.";
    AudienceUnknownTag = "QF-AUDIENCE-UNKNOWN-TAG", "The audience expression names a tag that does not exist.", "受众表达式中的标签不存在。", "Use one of the suggested tags listed in details, or create the tag first.";
    AudienceUnknownDepartment = "QF-AUDIENCE-UNKNOWN-DEPARTMENT", "The audience expression names a department that does not exist.", "受众表达式中的部门不存在。", "Use one of the suggested departments listed in details, or the department's id.";
    AudienceUnknownAttribute = "QF-AUDIENCE-UNKNOWN-ATTRIBUTE", "No contact has the attribute the audience expression tests.", "没有联系人具有受众表达式中的属性。", "Check the spelling against the suggestions in details; attribute names are case-sensitive.";
    AudienceUnknownSegment = "QF-AUDIENCE-UNKNOWN-SEGMENT", "The audience expression names a saved segment that does not exist.", "受众表达式中的分群不存在。", "Use one of the suggested segments listed in details, or save the segment first (POST /v1/segments).";
    AudienceCombination = "QF-AUDIENCE-COMBINATION", "Personal workspaces send to one tag or to picked contacts, not a combination.", "个人号只能按单个标签或手动挑选联系人群发，不能跨标签组合。", "Pick one tag or a list of contacts; use an enterprise workspace for combined audiences.";
    ApiBatchTooLarge = "QF-LIMIT-API-BATCH", "Too many recipients in one request.", "单次请求的接收者过多。", "Send at most 2,000 contact ids per request, or use a tag.";
    ImportRejected = "QF-IMPORT-REJECTED", "Some import lines could not be parsed; nothing was imported.", "部分导入行无法解析，未导入任何数据。", "Fix the lines listed in rejected and import the file again.";
    ImportFormat = "QF-IMPORT-FORMAT", "The import format is not recognised.", "无法识别导入格式。", "Send CSV with a header line (Content-Type: text/csv) or NDJSON (application/x-ndjson).";
    LimitTags = "QF-LIMIT-TAGS", "The workspace has the most tags its tier allows.", "标签数量已达上限。", "Delete an unused tag (see the dormant-tag report) before creating another.";
    LimitTagMembers = "QF-LIMIT-TAG-MEMBERS", "The tag would hold more contacts than the tier allows.", "该标签的联系人数量将超出上限。", "Split the contacts over several tags.";
    // Preflight.
    LimitRecipients = "QF-LIMIT-RECIPIENTS", "Too many recipients for one send.", "单次群发人数超出上限。", "Narrow the audience, or split it into several sends.";
    LimitDailySends = "QF-LIMIT-DAILY-SENDS", "The daily number of mass sends is used up.", "今日群发次数已用完。", "Wait until clears_at, when the daily quota resets.";
    ApprovalRequired = "QF-APPROVAL-REQUIRED", "A send this large needs approval.", "此规模的群发需要审批。", "Submit it; a reviewer or admin approves it with POST /v1/broadcasts/{id}/approve.";
    ChannelUnavailable = "QF-CHANNEL-UNAVAILABLE", "The channel is not configured on this server.", "该渠道未在服务器上配置。", "Use the inbox channel, or configure the channel first.";
    SelfApproval = "QF-APPROVAL-SELF", "You cannot approve your own send.", "不能审批自己的群发。", "Ask another reviewer or admin of the workspace.";
    DeliveryFailed = "QF-DELIVERY-FAILED", "The delivery failed after every retry.", "多次重试后投递仍失败。", "See the delivery's last_error in GET /v1/broadcasts/{id}/deliveries; fix the cause, then POST /v1/broadcasts/{id}/retry-failed.";
    DeliveryRejected = "QF-DELIVERY-REJECTED", "The receiving endpoint refused the message.", "接收方拒绝了该消息。", "See last_error for the endpoint's answer; fix the address or the endpoint, then retry-failed.";
    ChannelNoAddress = "QF-CHANNEL-NO-ADDRESS", "The contact has no address on this channel.", "该联系人在此渠道没有地址。", "Add the address (email, phone, webhook, WeCom user id) to the contact, then retry-failed.";
    ChannelSettings = "QF-CHANNEL-SETTINGS", "The channel settings are not valid.", "渠道设置无效。", "details name the field and what is wrong with it; GET /v1/channels shows the settings in force.";
    ChannelNotConfigured = "QF-CHANNEL-NOT-CONFIGURED", "This channel is not set up for the workspace.", "此工作区尚未配置该渠道。", "An admin sets the channel up with PUT /v1/channels/{channel} (or `qunfa channel set`), then send again.";
    ChannelAuth = "QF-CHANNEL-AUTH", "The channel provider refused the workspace's credentials.", "渠道服务商拒绝了工作区的凭据。", "Fix the credentials with PUT /v1/channels/{channel}, then retry-failed.";
    AddressInvalid = "QF-ADDRESS-INVALID", "The provider says the address does not exist or cannot receive messages.", "服务商表示该地址不存在或无法接收消息。", "Correct the contact's address, then retry-failed.";
    AddressPrivate = "QF-ADDRESS-PRIVATE", "The webhook address points at a loopback, private or otherwise non-public network.", "Webhook 地址指向回环、内网或其他非公网地址。", "Use a public endpoint, or let an admin allow private networks in the webhook settings (allow_private_networks).";
    DeliveryRedirect = "QF-DELIVERY-REDIRECT", "The endpoint answered with a redirect, which is not followed.", "接收端返回了重定向，系统不会跟随。", "Configure the final URL (see last_error for the Location), then retry-failed.";
    EmailBounced = "QF-EMAIL-BOUNCED", "The email bounced.", "邮件被退回。", "Check the address; a hard bounce also unsubscribes the address from email.";
    ConsentMissing = "QF-CONSENT-MISSING", "The contact has not consented to messages on this channel.", "该联系人未同意通过此渠道接收消息。", "Record the contact's consent (consent: {channel: true}) before sending on a channel that requires opt-in.";
    Unsubscribed = "QF-UNSUBSCRIBED", "The contact unsubscribed from this channel.", "该联系人已退订此渠道。", "Nothing to fix: the contact chose not to receive these messages. Only the contact can subscribe again.";
    UnsubscribeLink = "QF-UNSUBSCRIBE-LINK", "The unsubscribe link is not valid.", "退订链接无效。", "Use the complete link from the message; links are not shortened or edited.";
    // Recall, correction notices and the recipient's block.
    RecallNotAllowed = "QF-RECALL-NOT-ALLOWED", "This kind of workspace cannot recall a sent message.", "当前账号类型不支持撤回已发送的消息。", "Send a correction notice to exactly the same recipients instead: POST /v1/broadcasts/{id}/correction with the corrected content (qunfa broadcast correct ID --text …).";
    RecallWindow = "QF-RECALL-WINDOW", "The time to recall this message has passed.", "已超过可撤回的时间。", "A message can be recalled only within window_seconds (in details) of its send; send a correction notice instead: POST /v1/broadcasts/{id}/correction (qunfa broadcast correct ID --text …).";
    Recalled = "QF-RECALLED", "The sender recalled the message.", "发送者已撤回该消息。", "Nothing to fix: the message was recalled, so it is not delivered, shown or forwarded any more.";
    BlockedSender = "QF-BLOCKED-SENDER", "The contact blocked this sender.", "该联系人已屏蔽此发送者。", "Nothing to fix: the contact chose to receive nothing more from this sender; only the contact can undo it (DELETE /v1/inbox/{message_id}/block).";
    InvalidFallback = "QF-INVALID-FALLBACK", "The fallback order is not valid.", "备用渠道顺序无效。", "Each step names a channel not used before, `when` is unread or failed, and after_seconds is between 60 and 604800.";
    ContentBlocked = "QF-CONTENT-BLOCKED", "The content is blocked by the content-safety check.", "内容未通过内容安全检查，禁止发送。", "Remove or rephrase the marked words, rules or links; POST /v1/safety/check shows every hit with its position, and a reviewer can report a false positive.";
    ContentReview = "QF-CONTENT-REVIEW", "The content needs a human review before it is sent.", "内容需人工审核后才能发送。", "A reviewer approves or rejects it in the review queue (GET /v1/safety/reviews); rephrasing the marked text may avoid the review.";
    ContentDerank = "QF-CONTENT-DERANK", "The content is sent but marked as risky (finance, medical, political or risky content).", "内容涉及金融、医疗、时政或有风险，发送时将被标记。", "Nothing blocks; remove the marked terms if the message should not be marked.";
    ContentDuplicate = "QF-CONTENT-DUPLICATE", "The same or near-same content already reached many recipients recently: the send needs secondary verification.", "相同或相似内容近期已群发给较多人，需二次验证后才能发送。", "Ask an admin or the owner for a code (POST /v1/broadcasts/{id}/verification-code, qunfa broadcast verify-code ID) and send again with {\"verification_code\": CODE} (qunfa send … --verification-code CODE); it also clears by itself when older sends leave the window.";
    ContentNewDomain = "QF-CONTENT-NEW-DOMAIN", "A link goes to a domain this workspace has never sent before.", "链接指向本账号从未发送过的域名。", "Nothing blocks; check that the link is the one you mean (first-seen domains are a spam signal).";
    VerificationCode = "QF-VERIFICATION-CODE", "The verification code is wrong, used or expired.", "验证码错误、已使用或已过期。", "Ask an admin or the owner for a new code; a code is valid once, for one broadcast, for the policy's verification_code_minutes.";
    SafetyText = "QF-SAFETY-TEXT", "The text to check is empty or too long.", "待检查文本为空或过长。", "Send between 1 character and 256 KiB of UTF-8 text.";
    SafetySources = "QF-SAFETY-SOURCES", "The word library, rules or model could not be loaded; the previous version keeps serving.", "词库、规则或模型加载失败，继续使用原版本。", "Fix the file and line named in the message, then reload (POST /v1/safety/reload or qunfa safety reload).";
    // Sender security and account health.
    AccountNew = "QF-ACCOUNT-NEW", "The sender's account is too new to mass-send.", "新注册账号暂不能使用群发功能。", "Wait until clears_at (the policy's new_account_days after the account was opened); send to contacts one by one meanwhile.";
    LoginAbnormal = "QF-LOGIN-ABNORMAL", "Mass send is disabled: the account was used from a new device or network.", "检测到异常登录（新设备或 IP 变动），群发功能已暂停。", "If it was you, ask an admin for a one-time code (POST /v1/members/{id}/login-code) and confirm it with POST /v1/security/verify, or ask an admin to unlock (POST /v1/members/{id}/unlock). If not, revoke your keys.";
    LoginCode = "QF-LOGIN-CODE", "The login code is wrong, used or expired.", "登录验证码错误、已使用或已过期。", "Ask an admin for a new code; a code is valid once, for the policy's login_code_minutes.";
    TooFrequent = "QF-OPERATION-TOO-FREQUENT", "Too many send attempts in a short time: sending is paused.", "操作过于频繁，群发已暂停。", "Wait until clears_at (the policy's cooldown_hours); use preflight, which does not count, to check a send before sending it.";
    SendInWaves = "QF-SEND-IN-WAVES", "Many recipients are new contacts: the send goes out in waves.", "发送对象中新增联系人比例较高，将分批发送。", "Nothing to do: the waves go out by themselves; the details give their number and spacing.";
    HealthWatch = "QF-HEALTH-WATCH", "The account's health is under watch.", "账号健康度处于观察状态。", "Nothing blocks yet; GET /v1/members/{id}/health lists what lowered the score and how to recover.";
    HealthSandbox = "QF-HEALTH-SANDBOX", "The account is in sandbox: every send is reviewed, with tighter limits.", "账号处于沙盒监控：每次群发都需审核，限额收紧。", "GET /v1/members/{id}/health lists the reasons; the score recovers as they leave the window.";
    HealthSuspended = "QF-HEALTH-SUSPENDED", "The account is suspended from mass sending.", "账号已被暂停群发。", "GET /v1/members/{id}/health gives the reasons; a platform admin can review and lift the suspension.";
    LimitContactFrequency = "QF-LIMIT-CONTACT-FREQUENCY", "Some recipients already received as many mass messages as the frequency cap allows.", "部分接收者本周期内收到的群发已达上限。", "Nothing blocks: those recipients get a `filtered` record with this code and the rest are sent; the details give the count per cap.";
    ApprovalDuplicate = "QF-APPROVAL-DUPLICATE", "You already decided on this send.", "您已审批过此群发。", "Each stage needs a different approver; ask another reviewer.";
    ApprovalStage = "QF-APPROVAL-STAGE", "You are not a reviewer of the stage this send waits for.", "您不是当前审批阶段的审核人。", "GET /v1/broadcasts/{id}/approvals shows the stage; an admin assigns stages with PUT /v1/members/{id}/review-stages.";
    InvalidReviewChain = "QF-INVALID-REVIEW-CHAIN", "The review chain is not valid.", "审批链无效。", "Give at most 5 distinct stage names of 1 to 32 characters, e.g. [\"business\", \"legal\", \"technical\"].";
    // Scheduling.
    ScheduleNotAllowed = "QF-SCHEDULE-NOT-ALLOWED", "This kind of workspace cannot schedule broadcasts.", "当前账号类型不支持定时发送。", "Send it now, or use an enterprise workspace (scheduling needs an admin or the owner).";
    ScheduleInvalid = "QF-SCHEDULE-INVALID", "The schedule is not valid.", "定时设置无效。", "Give at (e.g. 2026-12-24T09:00:00 with time_zone, or 2026-12-24T09:00:00+08:00) for one run, or cron (e.g. \"0 9 * * MON\") for recurring runs, not both.";
    SchedulePast = "QF-SCHEDULE-PAST", "The scheduled time is in the past or too soon.", "定时发送的时间已过去或距现在太近。", "Pick a later time (at least the policy's schedule.min_lead_seconds ahead), or send it now.";
    ScheduleTooFar = "QF-SCHEDULE-TOO-FAR", "The scheduled time is too far ahead.", "定时发送的时间太远。", "Pick a time within the policy's schedule.max_horizon_days.";
    ScheduleTimeZone = "QF-SCHEDULE-TIME-ZONE", "The time zone is unknown or does not match the time's offset.", "时区无效，或与时间中的偏移量不一致。", "Use an IANA time zone name such as Asia/Shanghai, Europe/Berlin or UTC; give a time with an offset (+08:00) only when it is that zone's offset.";
    ScheduleCron = "QF-SCHEDULE-CRON", "The cron expression is not valid.", "cron 表达式无效。", "Use five fields: minute hour day-of-month month day-of-week, e.g. \"0 9 * * MON\" (Mondays 09:00) or \"30 8 1 * *\" (the 1st, 08:30); docs/scheduling.md has the syntax.";
    ScheduleNever = "QF-SCHEDULE-NEVER", "The cron expression never fires.", "cron 表达式永远不会触发。", "Check the day of month against the months: 30 February or 31 April do not exist.";
    ScheduleTooOften = "QF-SCHEDULE-TOO-OFTEN", "The recurring schedule fires more often than allowed.", "循环发送过于频繁。", "Space the runs at least the policy's schedule.min_interval_minutes apart.";
    ScheduleQuietHours = "QF-SCHEDULE-QUIET-HOURS", "The run falls into the workspace's quiet hours and goes at their end.", "发送时间处于免打扰时段，将在免打扰结束时发送。", "Nothing blocks; pick another time, or change the quiet hours (PUT /v1/workspace/schedule-settings).";
    QuietHoursFormat = "QF-SCHEDULE-QUIET-HOURS-FORMAT", "The quiet hours are not valid.", "免打扰时段格式无效。", "Use HH:MM-HH:MM in the workspace's time zone, e.g. 22:00-08:00 (it may wrap midnight), or null for none.";
    // Console logins.
    LoginFailed = "QF-LOGIN-FAILED", "The login name or password is wrong.", "登录名或密码错误。", "Check both and try again; after the policy's console.max_failures wrong passwords in a row the login is locked for a while. An admin or the owner can set a new password (PUT /v1/members/{id}/login).";
    LoginLocked = "QF-LOGIN-LOCKED", "Too many wrong passwords: the login is locked for a while.", "密码错误次数过多，登录已暂时锁定。", "Wait until clears_at, or ask an admin or the owner to set a new password (PUT /v1/members/{id}/login), which unlocks it.";
    LoginTaken = "QF-LOGIN-TAKEN", "Another member already has this login name.", "该登录名已被其他成员使用。", "Pick another login name (2 to 64 letters, digits, '.', '_', '-' or '@').";
    InvalidLogin = "QF-INVALID-LOGIN", "The login name or password is not acceptable.", "登录名或密码不符合要求。", "Use a login name of 2 to 64 letters, digits, '.', '_', '-' or '@', and a password of 10 to 256 characters.";
    CsrfToken = "QF-CSRF-TOKEN", "The request lacks the session's CSRF token.", "请求缺少会话的 CSRF 令牌。", "Browsers send the token from the login answer (csrf_token) in the X-CSRF-Token header with every change; scripts should use an API key instead of the console cookie.";
    DuplicateClientMsgId = "QF-CLIENT-MSG-ID-REUSED", "This client_msg_id was used for different content.", "client_msg_id 已用于不同内容。", "Use a new client_msg_id for new content; resend the same body to get the original broadcast.";
    // Measurement: tracked links, conversions, reports, A/B tests.
    LinkInvalid = "QF-LINK-INVALID", "The tracked link is not valid.", "跟踪链接无效。", "Give an http(s) url and a channel (1 to 64 characters, e.g. poster-shanghai or email); campaign is optional, at most 64 characters.";
    ConversionInvalid = "QF-CONVERSION-INVALID", "The conversion is not valid.", "转化数据无效。", "Give event_id (1 to 128 characters, your id of the event: reporting it again changes nothing), a value of 0 or more, and broadcast_id or link to attribute it.";
    ReportSegment = "QF-REPORT-SEGMENT", "The segment of the report cannot be evaluated.", "报表的分群无法计算。", "Name a saved segment (GET /v1/segments) or give an audience expression (docs/audiences.md), not both.";
    AbInvalid = "QF-AB-INVALID", "The A/B test is not valid.", "A/B 测试设置无效。", "Give 2 to 5 variants (3 recommended) that differ only in the declared variable (content, send_time, channel or attachment), a metric (open, read, reply, forward, click or conversion) and a test_fraction between 0 and 1; the base broadcast must be a draft.";
    AbSmallArm = "QF-AB-SMALL-ARM", "An arm of the A/B test has fewer recipients than recommended.", "A/B 测试的某一组接收人数少于建议值。", "Nothing blocks, but differences in small arms are rarely significant: raise test_fraction, use fewer variants or a larger audience (the policy's measurement.ab_min_per_arm per arm).";
    AbNoWinner = "QF-AB-NO-WINNER", "The A/B test has no significant winner.", "A/B 测试没有显著胜出的版本。", "Nothing was sent to the rest. Send an arm anyway with POST /v1/ab-tests/{id}/approve {\"arm\": N}, or leave it: the p-values are in the test's decision.";
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.as_str(), self.message_en())
    }
}

impl std::error::Error for Code {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {}", code.as_str());
            assert!(code.as_str().starts_with("QF-"));
            assert_eq!(Code::from_wire(code.as_str()), Some(*code));
            assert!(!code.message_zh().is_empty() && !code.hint().is_empty());
        }
    }
}
