// qunfa console: a small hand-written front end over the /v1 API. No build
// step; served from the binary. Every text the user or a contact wrote goes
// into the page as text (DOM nodes), never as HTML.
'use strict';

// ---------------------------------------------------------------- i18n
const TEXT = {
  zh: {
    brand: 'qunfa 群发', contacts: '联系人', audience: '受众', compose: '撰写', broadcasts: '群发记录',
    approvals: '审批', audit: '审计日志', health: '账号健康', logout: '退出', language: 'English',
    login_title: '登录控制台', login: '登录名', password: '密码', sign_in: '登录', signing_in: '正在登录…',
    import: '导入联系人', import_file: '文件（CSV 或 NDJSON）', import_text: '或粘贴内容', format: '格式',
    partial: '跳过有问题的行，导入其余', start_import: '开始导入', uploading: '正在上传', imported: '新增',
    updated: '更新', tags_created: '新建标签', rejected: '被拒绝的行', line: '行', code: '代码', message: '说明',
    name: '姓名', external_id: '外部 ID', tags: '标签', departments: '部门', created: '创建时间', more: '加载更多',
    attributes: '属性', channels: '渠道', opt_outs: '退订/不接收', open_inbox: '以该联系人身份打开收件箱',
    expr: '受众表达式', expr_help: '例如 tag:"客户等级/金牌" AND city = "上海"', matching: '位联系人符合',
    took: '用时', sample: '示例', use_in_compose: '用此受众撰写', position: '位置',
    content_type: '消息类型', text: '正文', title: '标题', url: '链接', description: '描述',
    safety: '内容安全', masked: '屏蔽预览', no_hits: '未发现问题', hits: '命中', checking: '检查中…',
    save_preflight: '保存草稿并预检', state: '状态', recipients: '接收人数',
    preflight: '预检', run_preflight: '重新预检', send: '发送', approve: '批准', reject: '驳回', comment: '意见',
    ok_to_send: '可以发送', blocked: '无法发送', fix: '如何解决', clears_at: '解除时间', no_verdicts: '没有问题',
    queued: '排队', sent: '已发送', delivered: '已送达', failed: '失败', read: '已读', replied: '已回复',
    filtered: '已过滤', progress_live: '实时进度', evidence: '导出证据', none: '暂无',
    pending: '待审批的群发', action: '操作', target: '对象', actor: '操作人', at: '时间', score: '分数',
    reasons: '原因', back: '返回', verification_code: '二次验证码（如需要）',
    state_draft: '草稿', state_scheduled: '已定时', state_pending_approval: '待审批', state_sending: '发送中',
    state_paused: '已暂停', state_completed: '已完成', state_cancelled: '已取消', state_blocked: '被拦截',
    tags_page: '标签与部门', dormant: '沉睡', size: '人数（含子标签）', own: '本标签', last_used: '最近使用',
    new_tag: '新标签路径', create: '创建', reviews: '内容审核', pending_reviews: '待审核内容', risk: '风险',
    reason: '理由', schedule: '定时发送', at_time: '时间', time_zone: '时区', cron: '循环（cron）',
    schedule_it: '设定时间', unschedule: '取消定时', recall: '撤回', scheduled_for: '计划时间',
    n_dormant: '个沉睡标签', search: '搜索联系人', search_help: '外部 ID 或姓名开头', preview_for: '预览，收件人', caption: '说明文字', html: '富文本（HTML）', upload: '上传文件', filename: '文件名', results: '效果', delivery_rate: '送达率', read_rate: '阅读率', reply_rate: '回复率', forward_rate: '转发率',
    open_rate: '打开率', click_rate: '点击率', conversion_rate: '转化率', all_channels: '全部渠道', reading_time: '阅读时长',
    average: '平均', short_read: '平均阅读不足 8 秒：建议改进标题或排版', heatmap: '打开时间分布',
    tracked_links: '追踪链接', tracked_links_help: '消息里出现此网址时，每位收件人看到的是自己的追踪链接（点击计入本群发）。', url: '网址', campaign: '活动', add_link: '添加追踪链接', clicks: '点击', unique_clicks: '独立点击', qr: '二维码',
    this_login: '本次登录', login_security: '登录安全', login_code: '管理员给的验证码', verify: '验证',
    change_password: '修改密码', current_password: '当前密码', new_password: '新密码（至少 10 个字符）',
    term_abnormal: '异常', term_verified: '已验证', term_trusted: '可信',
    term_block: '拦截', term_review: '需审核', term_derank: '降权', term_allow: '通过', term_warn: '提示', term_delay: '延迟',
    term_healthy: '健康', term_watch: '观察', term_sandbox: '沙盒监控', term_suspended: '已暂停',
    role_owner: '所有者', role_admin: '管理员', role_sender: '发送者', role_reviewer: '审核员', role_auditor: '审计员', role_viewer: '查看者',
  },
  en: {
    brand: 'qunfa', contacts: 'Contacts', audience: 'Audience', compose: 'Compose', broadcasts: 'Broadcasts',
    approvals: 'Approvals', audit: 'Audit log', health: 'Account health', logout: 'Log out', language: '中文',
    login_title: 'Log in to the console', login: 'Login', password: 'Password', sign_in: 'Log in', signing_in: 'Logging in…',
    import: 'Import contacts', import_file: 'File (CSV or NDJSON)', import_text: 'or paste the lines', format: 'Format',
    partial: 'Skip bad lines and import the rest', start_import: 'Import', uploading: 'Uploading', imported: 'imported',
    updated: 'updated', tags_created: 'tags created', rejected: 'Rejected lines', line: 'Line', code: 'Code', message: 'Message',
    name: 'Name', external_id: 'External id', tags: 'Tags', departments: 'Departments', created: 'Created', more: 'Load more',
    attributes: 'Attributes', channels: 'Channels', opt_outs: 'Opted out', open_inbox: 'Open the inbox as this contact',
    expr: 'Audience expression', expr_help: 'e.g. tag:"客户等级/金牌" AND city = "上海"', matching: 'contacts match',
    took: 'took', sample: 'Sample', use_in_compose: 'Compose for this audience', position: 'position',
    content_type: 'Message type', text: 'Text', title: 'Title', url: 'Link', description: 'Description',
    safety: 'Content safety', masked: 'Masked preview', no_hits: 'Nothing found', hits: 'Hits', checking: 'Checking…',
    save_preflight: 'Save draft and run preflight', state: 'State', recipients: 'Recipients',
    preflight: 'Preflight', run_preflight: 'Run preflight again', send: 'Send', approve: 'Approve', reject: 'Reject', comment: 'Comment',
    ok_to_send: 'Ready to send', blocked: 'Cannot be sent', fix: 'How to fix', clears_at: 'Clears at', no_verdicts: 'No problems',
    queued: 'Queued', sent: 'Sent', delivered: 'Delivered', failed: 'Failed', read: 'Read', replied: 'Replied',
    filtered: 'Filtered', progress_live: 'Live progress', evidence: 'Export evidence', none: 'Nothing yet',
    pending: 'Broadcasts waiting for approval', action: 'Action', target: 'Target', actor: 'Actor', at: 'At', score: 'Score',
    reasons: 'Reasons', back: 'Back', verification_code: 'Verification code (if asked)',
    state_draft: 'draft', state_scheduled: 'scheduled', state_pending_approval: 'pending approval', state_sending: 'sending',
    state_paused: 'paused', state_completed: 'completed', state_cancelled: 'cancelled', state_blocked: 'blocked',
    tags_page: 'Tags and departments', dormant: 'dormant', size: 'Size (with sub-tags)', own: 'Own', last_used: 'Last used',
    new_tag: 'New tag path', create: 'Create', reviews: 'Content review', pending_reviews: 'Held for content review', risk: 'Risk',
    reason: 'Reason', schedule: 'Schedule', at_time: 'Time', time_zone: 'Time zone', cron: 'Recurring (cron)',
    schedule_it: 'Schedule it', unschedule: 'Cancel the schedule', recall: 'Recall', scheduled_for: 'Scheduled for',
    n_dormant: 'dormant tags', search: 'Search contacts', search_help: 'External id or start of the name', preview_for: 'Preview for', caption: 'Caption', html: 'Rich text (HTML)', upload: 'Upload', filename: 'File name', results: 'Results', delivery_rate: 'Delivery rate', read_rate: 'Read rate', reply_rate: 'Reply rate', forward_rate: 'Forward rate',
    open_rate: 'Open rate', click_rate: 'Click rate', conversion_rate: 'Conversion rate', all_channels: 'All channels', reading_time: 'Reading time',
    average: 'Average', short_read: 'Read for under 8 seconds on average: try a better title or layout', heatmap: 'When it was opened',
    tracked_links: 'Tracked links', tracked_links_help: 'Where the message has this URL, each recipient gets their own tracked link (clicks count for this broadcast).', url: 'URL', campaign: 'Campaign', add_link: 'Add tracked link', clicks: 'Clicks', unique_clicks: 'Unique clicks', qr: 'QR code',
    this_login: 'This login', login_security: 'Login security', login_code: 'Code from an admin', verify: 'Verify',
    change_password: 'Change the password', current_password: 'Current password', new_password: 'New password (10 characters or more)',
    term_abnormal: 'abnormal', term_verified: 'verified', term_trusted: 'trusted',
    term_block: 'block', term_review: 'review', term_derank: 'derank', term_allow: 'allow', term_warn: 'warn', term_delay: 'delay',
    term_healthy: 'healthy', term_watch: 'watch', term_sandbox: 'sandbox', term_suspended: 'suspended',
    role_owner: 'owner', role_admin: 'admin', role_sender: 'sender', role_reviewer: 'reviewer', role_auditor: 'auditor', role_viewer: 'viewer',
  },
};
const t = translator(TEXT);

// ---------------------------------------------------------------- DOM
const main = () => document.getElementById('main');
const stateBadge = (s) => h('span', { class: `badge ${s}` }, t(`state_${s}`));
// A verdict severity, content action or health state, in the page's language.
const term = (k) => h('span', { class: `badge ${k}` }, t(`term_${k}`));

// ---------------------------------------------------------------- API
async function api(method, path, body, opts = {}) {
  const headers = {};
  if (method !== 'GET') headers['X-CSRF-Token'] = sessionStorage.getItem('qunfa.csrf') || '';
  let payload;
  if (typeof body === 'string') {
    payload = body;
    headers['Content-Type'] = opts.type || 'text/plain';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  }
  const r = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) {
    // A login in another tab made a new session: take its token and try once more.
    if (r.status === 403 && data?.error?.code === 'QF-CSRF-TOKEN' && !opts.retried) {
      await loadSession();
      if (me) return api(method, path, body, { ...opts, retried: true });
    }
    if (r.status === 401 && !opts.quiet) {
      sessionStorage.removeItem('qunfa.csrf');
      location.hash = '#/login';
    }
    throw new ApiError(r.status, data?.error);
  }
  return data;
}

// ---------------------------------------------------------------- session
let me = null;
async function loadSession() {
  try {
    me = await api('GET', '/v1/console/session', undefined, { quiet: true });
    sessionStorage.setItem('qunfa.csrf', me.csrf_token);
  } catch {
    me = null;
  }
}
function nav(current) {
  const top = document.getElementById('top');
  if (!me) { fill(top); return; }
  const link = (hash, key) => h('a', { href: hash, 'aria-current': current === hash ? 'page' : null }, t(key));
  fill(top, h('nav', { 'aria-label': 'main' },
    h('span', { class: 'brand' }, t('brand')),
    link('#/contacts', 'contacts'), link('#/audience', 'audience'), link('#/compose', 'compose'),
    link('#/tags', 'tags_page'), link('#/broadcasts', 'broadcasts'), link('#/approvals', 'approvals'),
    link('#/reviews', 'reviews'), link('#/audit', 'audit'),
    link('#/health', 'health'),
    h('span', { class: 'spacer' }),
    h('span', { class: 'muted', id: 'whoami' }, `${me.name} · ${me.workspace_name} · ${t(`role_${me.role}`)}`),
    h('button', { class: 'link', id: 'lang', onclick: () => { switchLang(); route(); } }, t('language')),
    h('button', { class: 'link', id: 'logout', onclick: logout }, t('logout'))));
}
async function logout() {
  try { await api('POST', '/v1/console/logout'); } catch { /* already gone */ }
  me = null;
  sessionStorage.removeItem('qunfa.csrf');
  location.hash = '#/login';
}

// ---------------------------------------------------------------- pages
function loginPage(view) {
  const err = h('div');
  const login = h('input', { type: 'text', id: 'login', name: 'login', autocomplete: 'username', required: true });
  const password = h('input', { type: 'password', id: 'password', name: 'password', autocomplete: 'current-password', required: true });
  const button = h('button', { class: 'primary', type: 'submit', id: 'sign-in' }, t('sign_in'));
  const form = h('form', { class: 'card login', onsubmit: async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    button.textContent = t('signing_in');
    fill(err);
    try {
      me = await api('POST', '/v1/console/login', { login: login.value.trim(), password: password.value }, { quiet: true });
      sessionStorage.setItem('qunfa.csrf', me.csrf_token);
      location.hash = '#/contacts';
    } catch (e) {
      fill(err, errorBox(e));
      button.disabled = false;
      button.textContent = t('sign_in');
    }
  } },
  h('h1', {}, t('login_title')),
  h('label', { for: 'login' }, t('login')), login,
  h('label', { for: 'password' }, t('password')), password,
  h('p', {}, button), err,
  h('p', {}, h('button', { type: 'button', class: 'link', onclick: () => { switchLang(); route(); } }, t('language'))));
  view.show(form);
  login.focus();
}

async function contactsPage(view) {
  const rows = h('tbody');
  const more = h('button', { type: 'button' }, t('more'));
  const search = h('input', { type: 'search', id: 'contact-search', placeholder: t('search_help'), 'aria-label': t('search') });
  let cursor = null;
  let seq = 0;
  const searchErr = h('div', { 'aria-live': 'polite' });
  search.addEventListener('input', debounce(() => {
    cursor = null;
    fill(rows);
    fill(searchErr);
    page().catch((e) => fill(searchErr, errorBox(e)));
  }, 250));
  async function page() {
    const mine = ++seq;
    const q = new URLSearchParams({ limit: '50' });
    if (cursor) q.set('cursor', cursor);
    if (search.value.trim()) q.set('q', search.value.trim());
    const data = await api('GET', `/v1/contacts?${q}`);
    if (mine !== seq) return;
    for (const c of data.items) {
      rows.append(h('tr', {},
        h('td', {}, h('a', { href: `#/contacts/${c.id}` }, c.name)),
        h('td', {}, c.external_id), h('td', {}, c.tags.join(', ')), h('td', {}, c.departments.join(', ')),
        h('td', {}, when(c.created_at))));
    }
    cursor = data.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener('click', () => page().catch((e) => more.replaceWith(errorBox(e))));

  const file = h('input', { type: 'file', id: 'import-file', accept: '.csv,.ndjson,.jsonl,.json,text/csv' });
  const text = h('textarea', { id: 'import-text', rows: 4, placeholder: 'external_id,name,email,tags\n…' });
  const format = h('select', { id: 'import-format' }, h('option', { value: 'csv' }, 'CSV'), h('option', { value: 'ndjson' }, 'NDJSON'));
  const partial = h('input', { type: 'checkbox', id: 'import-partial' });
  const bar = h('progress', { max: 100, value: 0, hidden: true, 'aria-label': t('uploading') });
  const result = h('div', { id: 'import-result', 'aria-live': 'polite' });
  file.addEventListener('change', () => {
    const f = file.files[0];
    if (f && /\.(nd)?jsonl?$/i.test(f.name)) format.value = 'ndjson';
  });
  const start = h('button', { class: 'primary', type: 'button', id: 'import-start', onclick: () => {
    const body = file.files[0] || text.value;
    if (!body || (typeof body === 'string' && !body.trim())) return;
    const q = new URLSearchParams({ format: format.value });
    if (partial.checked) q.set('partial', 'true');
    // XMLHttpRequest: fetch cannot report upload progress.
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/v1/contacts/import?${q}`);
    xhr.setRequestHeader('X-CSRF-Token', sessionStorage.getItem('qunfa.csrf') || '');
    xhr.setRequestHeader('Content-Type', format.value === 'csv' ? 'text/csv' : 'application/x-ndjson');
    bar.hidden = false;
    bar.value = 0;
    start.disabled = true;
    xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) bar.value = Math.round((100 * ev.loaded) / ev.total); };
    xhr.onload = () => {
      start.disabled = false;
      bar.value = 100;
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { data = null; }
      if (xhr.status >= 400) {
        const e = new ApiError(xhr.status, data?.error);
        const lines = data?.error?.details || [];
        fill(result, errorBox(e), rejectedTable(lines));
        return;
      }
      fill(result, h('p', { class: 'ok' },
        `${data.imported} ${t('imported')}, ${data.updated} ${t('updated')}, ${data.tags_created} ${t('tags_created')}`),
      data.rejected.length ? rejectedTable(data.rejected) : null);
      fill(rows);
      cursor = null;
      page();
    };
    xhr.onerror = () => { start.disabled = false; fill(result, errorBox(new ApiError(0, { message: 'network error' }))); };
    xhr.send(body);
  } }, t('start_import'));

  view.show(h('h1', {}, t('contacts')),
    h('section', { class: 'card', 'aria-labelledby': 'import-h' },
      h('h2', { id: 'import-h' }, t('import')),
      h('label', { for: 'import-file' }, t('import_file')), file,
      h('label', { for: 'import-text' }, t('import_text')), text,
      h('div', { class: 'row' },
        h('div', {}, h('label', { for: 'import-format' }, t('format')), format),
        h('div', {}, h('label', { for: 'import-partial' }, partial, ' ', t('partial')))),
      h('p', {}, start), bar, result),
    h('p', {}, search), searchErr,
    h('div', { class: 'table-wrap' }, h('table', { id: 'contacts' },
      h('thead', {}, h('tr', {}, h('th', {}, t('name')), h('th', {}, t('external_id')), h('th', {}, t('tags')),
        h('th', {}, t('departments')), h('th', {}, t('created')))), rows)),
    h('p', {}, more));
  await page();
}
function rejectedTable(lines) {
  if (!lines.length) return null;
  return h('div', {}, h('h2', {}, t('rejected')), h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, h('th', {}, t('line')), h('th', {}, t('code')), h('th', {}, t('message')))),
    h('tbody', {}, lines.map((l) => (typeof l === 'string'
      ? h('tr', {}, h('td', { colspan: 3 }, l))
      : h('tr', {}, h('td', {}, l.line), h('td', {}, l.code), h('td', {}, l.message))))))));
}

async function contactPage(view, id) {
  const c = await api('GET', `/v1/contacts/${encodeURIComponent(id)}`);
  const link = h('p', { id: 'inbox-link' });
  view.show(h('p', {}, h('a', { href: '#/contacts' }, `← ${t('back')}`)),
    h('h1', {}, c.name),
    h('div', { class: 'card' },
      h('p', {}, `${t('external_id')}: ${c.external_id}`),
      h('p', {}, `${t('tags')}: ${c.tags.join(', ') || '—'}`),
      h('p', {}, `${t('departments')}: ${c.departments.join(', ') || '—'}`),
      h('h2', {}, t('attributes')),
      h('div', { class: 'table-wrap' }, h('table', {}, h('tbody', {}, Object.entries(c.attributes).map(([k, v]) =>
        h('tr', {}, h('th', {}, k), h('td', {}, String(v))))))),
      h('h2', {}, t('channels')),
      h('p', {}, Object.entries(c.channels).filter(([, v]) => v).map(([k, v]) => `${k}: ${v}`).join(' · ') || '—'),
      (c.opt_outs || []).length ? h('p', {}, `${t('opt_outs')}: ${c.opt_outs.map((o) => `${o.channel} (${o.reason})`).join(', ')}`) : null,
      h('p', {}, h('button', { type: 'button', id: 'open-inbox', onclick: async () => {
        try {
          const tok = await api('POST', `/v1/contacts/${encodeURIComponent(id)}/inbox-token`);
          const href = `/inbox#token=${encodeURIComponent(tok.token)}`;
          fill(link, h('a', { href, target: '_blank', rel: 'noopener', id: 'inbox-href' }, href));
        } catch (e) { fill(link, errorBox(e)); }
      } }, t('open_inbox'))), link));
}

// Shows `expr` with the character at `pos` marked (an error's position).
function exprWithError(expr, pos) {
  const chars = Array.from(expr);
  const at = Math.min(pos, chars.length);
  return h('div', { class: 'expr-error', 'aria-hidden': 'true' },
    chars.slice(0, at).join(''), h('span', { class: 'at' }, chars[at] ?? ' '), chars.slice(at + 1).join(''));
}

function audiencePage(view) {
  const expr = h('textarea', { id: 'expr', rows: 3, placeholder: t('expr_help'), 'aria-describedby': 'expr-out' },
    sessionStorage.getItem('qunfa.expr') || '');
  const out = h('div', { id: 'expr-out', 'aria-live': 'polite' });
  let seq = 0;
  const count = debounce(async () => {
    const mine = ++seq;
    const value = expr.value.trim();
    sessionStorage.setItem('qunfa.expr', expr.value);
    if (!value) { fill(out); return; }
    try {
      const r = await api('POST', '/v1/audiences/count', { expr: value, sample: 5 });
      if (mine !== seq) return;
      fill(out,
        h('p', {}, h('span', { class: 'count', id: 'count' }, r.count.toLocaleString()), ' ', t('matching'),
          h('span', { class: 'muted' }, ` · ${t('took')} ${r.took_ms.toFixed(2)} ms`)),
        r.sample.length ? h('p', { class: 'muted' }, `${t('sample')}: ${r.sample.map((s) => s.name).join('、')}`) : null);
    } catch (e) {
      if (mine !== seq) return;
      const pos = e.body?.position;
      fill(out, errorBox(e), pos !== undefined ? h('div', {}, h('span', { class: 'muted' }, `${t('position')} ${pos}`), exprWithError(value, pos)) : null);
    }
  }, 200);
  expr.addEventListener('input', count);
  view.show(h('h1', {}, t('audience')),
    h('div', { class: 'card' }, h('label', { for: 'expr' }, t('expr')), expr, out,
      h('p', {}, h('button', { type: 'button', class: 'primary', id: 'use-audience', onclick: () => { location.hash = '#/compose'; } }, t('use_in_compose')))));
  count();
  expr.focus();
}

// The text with each hit marked in place (character offsets, code points).
function highlighted(text, hits) {
  const chars = Array.from(text);
  const rank = { block: 3, review: 2, derank: 1 };
  const level = new Array(chars.length).fill(null);
  const why = new Array(chars.length).fill(null);
  for (const hit of hits) {
    if (hit.start === 0 && hit.end === chars.length && hit.gate === 'model') continue; // the whole message
    for (let i = hit.start; i < hit.end && i < chars.length; i++) {
      if (!level[i] || rank[hit.action] > rank[level[i]]) {
        level[i] = hit.action;
        why[i] = lang === 'zh' ? hit.message_zh : hit.message;
      }
    }
  }
  const out = [];
  let i = 0;
  while (i < chars.length) {
    let j = i + 1;
    while (j < chars.length && level[j] === level[i] && why[j] === why[i]) j++;
    const piece = chars.slice(i, j).join('');
    out.push(level[i] ? h('mark', { class: level[i], title: why[i] }, piece) : piece);
    i = j;
  }
  return out;
}

function composePage(view) {
  const type = h('select', { id: 'content-type' },
    ['text', 'link', 'image', 'file', 'miniprogram', 'richtext'].map((v) => h('option', { value: v }, v)));
  const text = h('textarea', { id: 'content-text', rows: 6, 'aria-describedby': 'safety-out' }, sessionStorage.getItem('qunfa.text') || '');
  const title = h('input', { type: 'text', id: 'content-title' });
  const url = h('input', { type: 'text', id: 'content-url', inputmode: 'url' });
  const appid = h('input', { type: 'text', id: 'content-appid' });
  const pagepath = h('input', { type: 'text', id: 'content-pagepath', placeholder: 'pages/index/index' });
  const filename = h('input', { type: 'text', id: 'content-filename' });
  const mediaId = h('input', { type: 'text', id: 'content-media', readonly: true });
  const upload = h('input', { type: 'file', id: 'content-upload' });
  const uploadOut = h('span', { class: 'muted', 'aria-live': 'polite' });
  // Images and files go to /v1/media first; the broadcast names the media id.
  upload.addEventListener('change', async () => {
    const f = upload.files[0];
    if (!f) return;
    try {
      const r = await fetch(`/v1/media?${new URLSearchParams({ filename: f.name })}`, {
        method: 'POST', body: f, credentials: 'same-origin',
        headers: { 'Content-Type': f.type || 'application/octet-stream', 'X-CSRF-Token': sessionStorage.getItem('qunfa.csrf') || '' },
      });
      const data = await r.json();
      if (!r.ok) throw new ApiError(r.status, data.error);
      mediaId.value = data.media_id;
      if (!filename.value) filename.value = f.name;
      fill(uploadOut, `${data.media_id} · ${data.content_type} · ${data.size.toLocaleString()} B`);
    } catch (e) { fill(uploadOut, errorBox(e)); }
  });
  const expr = h('input', { type: 'text', id: 'compose-expr', value: sessionStorage.getItem('qunfa.expr') || '' });
  const channels = ['inbox', 'email', 'sms', 'webhook', 'wecom'].map((c) =>
    h('label', { class: 'inline' }, h('input', { type: 'checkbox', value: c, checked: c === 'inbox', class: 'channel' }), ` ${c}`));
  const preview = h('div', { class: 'highlight', id: 'highlight', 'aria-live': 'polite' });
  const out = h('div', { id: 'safety-out', 'aria-live': 'polite' });
  const err = h('div');
  const extra = h('div');
  const textLabel = h('label', { for: 'content-text' }, t('text'));
  function fields() {
    const v = type.value;
    fill(textLabel, t({ text: 'text', link: 'description', image: 'caption', file: 'text', miniprogram: 'text', richtext: 'html' }[v]));
    text.hidden = ['file', 'miniprogram'].includes(v);
    textLabel.hidden = text.hidden;
    fill(extra,
      ['link', 'miniprogram'].includes(v) ? [h('label', { for: 'content-title' }, t('title')), title] : null,
      v === 'link' ? [h('label', { for: 'content-url' }, t('url')), url] : null,
      v === 'miniprogram' ? [h('label', { for: 'content-appid' }, 'appid'), appid, h('label', { for: 'content-pagepath' }, 'pagepath'), pagepath] : null,
      ['image', 'file'].includes(v) ? [h('label', { for: 'content-upload' }, t('upload')), upload, ' ', uploadOut,
        h('label', { for: 'content-media' }, 'media_id'), mediaId] : null,
      v === 'file' ? [h('label', { for: 'content-filename' }, t('filename')), filename] : null);
  }
  type.addEventListener('change', fields);
  fields();
  let seq = 0;
  const check = debounce(async () => {
    const mine = ++seq;
    sessionStorage.setItem('qunfa.text', text.value);
    if (!text.value.trim()) { fill(preview); fill(out); return; }
    fill(out, h('span', { class: 'muted' }, t('checking')));
    try {
      const r = await api('POST', '/v1/safety/check', { text: text.value });
      if (mine !== seq) return;
      fill(preview, ...highlighted(text.value, r.hits));
      fill(out,
        h('p', {}, `${t('safety')}: `, h('span', { class: `badge ${r.action}`, id: 'safety-action', 'data-action': r.action }, t(`term_${r.action}`)),
          h('span', { class: 'muted' }, ` · ${r.hits_total} ${t('hits')}`)),
        r.hits.length ? h('ul', { id: 'hits' }, r.hits.map((hit) => h('li', {},
          term(hit.action), ' ',
          `${hit.original ? `“${hit.original}” — ` : ''}${lang === 'zh' ? hit.message_zh : hit.message}`))) : h('p', { class: 'ok' }, t('no_hits')),
        r.action !== 'allow' ? h('p', {}, h('strong', {}, `${t('masked')}: `), h('span', { id: 'masked' }, r.masked)) : null);
    } catch (e) {
      if (mine === seq) fill(out, errorBox(e));
    }
  }, 250);
  text.addEventListener('input', check);
  // The text as one recipient of the audience will read it ({{name}},
  // {{external_id}}, {{attribute}}, {{attribute|default}}).
  const personal = h('div', { class: 'highlight', id: 'personal-preview', 'aria-live': 'polite' });
  let sample = null;
  const render = () => {
    if (!sample || !text.value.includes('{{')) { fill(personal); return; }
    const value = (key) => (key === 'name' ? sample.name : key === 'external_id' ? sample.external_id : sample.attributes[key]);
    const out = text.value.replace(/\{\{\s*([^}|]+?)\s*(?:\|([^}]*))?\}\}/g, (_, key, dflt) => {
      const v = value(key.trim());
      return v === undefined || v === null || v === '' ? (dflt ?? '') : String(v);
    });
    fill(personal, h('span', { class: 'muted' }, `${t('preview_for')} ${sample.name}: `), out);
  };
  const loadSample = debounce(async () => {
    try {
      const r = await api('POST', '/v1/audiences/count', { expr: expr.value.trim() || 'all', sample: 1 });
      sample = r.sample[0] || null;
    } catch { sample = null; }
    render();
  }, 300);
  expr.addEventListener('input', loadSample);
  text.addEventListener('input', render);
  loadSample();
  const save = h('button', { type: 'button', class: 'primary', id: 'save-preflight', onclick: async () => {
    fill(err);
    const v = type.value;
    const content = { type: v };
    const put = (k, x) => { if (x !== '') content[k] = x; };
    if (v === 'text') put('text', text.value);
    if (v === 'link') { put('url', url.value.trim()); put('title', title.value); put('description', text.value); }
    if (v === 'image') { put('media_id', mediaId.value); put('caption', text.value); }
    if (v === 'file') { put('media_id', mediaId.value); put('filename', filename.value); }
    if (v === 'miniprogram') { put('appid', appid.value.trim()); put('pagepath', pagepath.value.trim()); put('title', title.value); }
    if (v === 'richtext') put('html', text.value);
    const picked = channels.map((l) => l.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
    const audience = expr.value.trim() ? { expr: expr.value.trim() } : { all: true };
    try {
      const b = await api('POST', '/v1/broadcasts', { content, audience, channels: picked });
      location.hash = `#/broadcasts/${b.id}`;
    } catch (e) { fill(err, errorBox(e)); }
  } }, t('save_preflight'));
  view.show(h('h1', {}, t('compose')),
    h('div', { class: 'card' },
      h('label', { for: 'content-type' }, t('content_type')), type, extra,
      textLabel, text,
      personal,
      h('h2', {}, t('safety')), preview, out,
      h('label', { for: 'compose-expr' }, t('expr')), expr,
      h('fieldset', {}, h('legend', {}, t('channels')), channels),
      h('p', {}, save), err));
  check();
}

function verdictList(verdicts) {
  if (!verdicts.length) return h('p', { class: 'ok' }, t('no_verdicts'));
  return h('div', { id: 'verdicts' }, verdicts.map((v) => h('div', { class: `verdict ${v.severity}` },
    term(v.severity), ' ', h('strong', {}, lang === 'zh' ? v.message_zh : v.message),
    h('span', { class: 'muted' }, ` (${v.code})`),
    h('div', { class: 'hint' }, `${t('fix')}: ${v.hint}`),
    v.clears_at ? h('div', { class: 'muted' }, `${t('clears_at')}: ${when(v.clears_at)}`) : null)));
}

// Progress bars as SVG (no chart library).
function bars(b) {
  const total = Math.max(b.recipients || b.counts.total || 0, 1);
  const keys = ['queued', 'sent', 'delivered', 'read', 'replied', 'failed', 'filtered'];
  return h('div', { class: 'bars', id: 'progress' }, keys.map((k) => {
    const n = b.counts[k] || 0;
    const w = Math.min(100, (100 * n) / total);
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('viewBox', '0 0 100 4');
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', `${t(k)} ${n}`);
    const bg = document.createElementNS(svg.namespaceURI, 'rect');
    Object.entries({ x: 0, y: 0, width: 100, height: 4, fill: '#e8ebf0' }).forEach(([a, v]) => bg.setAttribute(a, v));
    const fg = document.createElementNS(svg.namespaceURI, 'rect');
    Object.entries({ x: 0, y: 0, width: w, height: 4, fill: k === 'failed' ? '#b3261e' : '#0b6bcb' }).forEach(([a, v]) => fg.setAttribute(a, v));
    svg.append(bg, fg);
    return h('div', { class: 'bar' }, h('span', {}, t(k)), svg, h('span', { 'data-count': k }, n.toLocaleString()));
  }));
}

// Rates from the counts: delivered of the recipients; read, replied and
// forwarded of the delivered.
function rates(b) {
  const c = b.counts;
  const pct = (n, d) => (d ? (100 * n) / d : 0);
  const rows = [
    ['delivery_rate', pct(c.delivered, b.recipients || c.total), `${c.delivered}/${b.recipients || c.total}`],
    ['read_rate', pct(c.read, c.delivered), `${c.read}/${c.delivered}`],
    ['reply_rate', pct(c.replied, c.delivered), `${c.replied}/${c.delivered}`],
    ['forward_rate', pct(c.forwarded, c.delivered), `${c.forwarded}/${c.delivered}`],
  ];
  return h('div', { class: 'bars', id: 'rates' }, rows.map(([key, p, counts]) => {
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('viewBox', '0 0 100 4');
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', `${t(key)} ${p.toFixed(1)}%`);
    for (const [w, fillColor] of [[100, '#e8ebf0'], [p, '#137333']]) {
      const r = document.createElementNS(svg.namespaceURI, 'rect');
      Object.entries({ x: 0, y: 0, width: w, height: 4, fill: fillColor }).forEach(([a, v]) => r.setAttribute(a, v));
      svg.append(r);
    }
    return h('div', { class: 'bar' }, h('span', {}, t(key)), svg, h('span', { 'data-rate': key, title: counts }, `${p.toFixed(1)}%`));
  }));
}

// SVG helpers: an element with attributes, in the SVG namespace.
function svg(tag, attrs, ...kids) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...kids);
  return el;
}

// The report of a broadcast (issue 9's API): rates per channel, the
// reading-time histogram with the "under 8 seconds" flag, and the
// day × hour heatmap of first opens; CSV for the rest.
async function reportSection(id) {
  const r = await api('GET', `/v1/broadcasts/${encodeURIComponent(id)}/report`);
  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  const rows = [r.totals, ...r.channels];
  const table = h('div', { class: 'table-wrap' }, h('table', { id: 'report-rates' },
    h('thead', {}, h('tr', {}, ['channels', 'delivery_rate', 'open_rate', 'reply_rate', 'forward_rate', 'click_rate', 'conversion_rate']
      .map((k) => h('th', {}, t(k))))),
    h('tbody', {}, rows.map((f) => h('tr', {}, h('td', {}, f.channel === 'all' || !f.channel ? t('all_channels') : f.channel),
      ...['delivery', 'open', 'reply', 'forward', 'click', 'conversion'].map((k) => h('td', {}, pct(f.rates[k]))))))));
  // Reading time: one bar per bucket.
  const hist = r.reading.histogram;
  const most = Math.max(1, ...hist.map((b) => b.recipients));
  const w = 64;
  const histogram = svg('svg', { viewBox: `0 0 ${hist.length * w} 110`, role: 'img', class: 'chart',
    'aria-label': `${t('reading_time')}: ${hist.map((b) => `${b.from_ms / 1000}s ${b.recipients}`).join(', ')}` },
  ...hist.flatMap((b, i) => {
    const bh = (90 * b.recipients) / most;
    return [svg('rect', { x: i * w + 3, y: 95 - bh, width: w - 6, height: bh, fill: b.to_ms !== null && b.to_ms <= r.reading.short_read_seconds * 1000 ? '#a15c00' : '#0b6bcb' }),
      svg('text', { x: i * w + w / 2, y: 108, 'font-size': 11, 'text-anchor': 'middle', fill: '#5b6475' }, `${b.from_ms / 1000}s`)];
  }));
  // Heatmap: 7 days × 24 hours of first opens.
  const opens = r.heatmaps.opens;
  const peak = Math.max(1, ...opens.flat());
  const days = lang === 'zh' ? ['一', '二', '三', '四', '五', '六', '日'] : ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'];
  const heat = svg('svg', { viewBox: '0 0 520 150', role: 'img', class: 'chart', 'aria-label': t('heatmap') },
    ...opens.flatMap((hours, d) => [svg('text', { x: 0, y: d * 20 + 14, 'font-size': 10, fill: '#5b6475' }, days[d]),
      ...hours.map((n, hr) => svg('rect', { x: 30 + hr * 20, y: d * 20, width: 19, height: 19,
        fill: n ? `rgba(11,107,203,${0.15 + (0.85 * n) / peak})` : '#eef1f6' }, svg('title', {}, `${days[d]} ${hr}:00 — ${n}`)))]),
    ...[0, 6, 12, 18].map((hr) => svg('text', { x: 30 + hr * 20, y: 148, 'font-size': 9, fill: '#5b6475' }, `${hr}:00`)));
  return h('div', { id: 'report' }, table,
    h('h3', {}, t('reading_time')),
    h('p', {}, r.reading.average_ms === null ? t('none')
      : `${t('average')}: ${(r.reading.average_ms / 1000).toFixed(1)} s · ${r.reading.measured_recipients} ${t('recipients')}`,
    r.reading.short_read ? h('span', { class: 'badge warn', id: 'short-read' }, ` ${t('short_read')}`) : null),
    histogram,
    h('h3', {}, `${t('heatmap')} (${r.heatmaps.time_zone})`), heat,
    h('p', {}, h('a', { href: `/v1/broadcasts/${encodeURIComponent(id)}/report?format=csv`, download: `report-${id}.csv` }, 'CSV')));
}

// The broadcast's tracked links (issue 9): each recipient gets their own
// tracked URL where the message has the link's URL on its channel; QR codes
// for offline channels.
function linksSection(b) {
  const list = h('div', { id: 'links-list', 'aria-live': 'polite' });
  const err = h('div');
  const url = h('input', { type: 'url', id: 'link-url', placeholder: 'https://' });
  const channel = h('input', { type: 'text', id: 'link-channel', value: b.channels[0] || 'inbox', list: 'link-channels' });
  const campaign = h('input', { type: 'text', id: 'link-campaign' });
  async function load() {
    try {
      const r = await api('GET', `/v1/links?broadcast_id=${encodeURIComponent(b.id)}&limit=100`);
      fill(list, r.items.length === 0 ? h('p', { class: 'muted' }, t('none')) : h('div', { class: 'table-wrap' }, h('table', { id: 'links-table' },
        h('thead', {}, h('tr', {}, ['url', 'channels', 'campaign', 'clicks', 'unique_clicks', 'qr'].map((k) => h('th', {}, t(k))))),
        h('tbody', {}, r.items.map((l) => h('tr', {},
          h('td', {}, h('span', { class: 'wrap' }, l.url), h('br'), h('code', {}, l.tracked_url)),
          h('td', {}, l.channel), h('td', {}, l.campaign || ''), h('td', {}, String(l.clicks)), h('td', {}, String(l.unique_clicks)),
          h('td', {}, h('a', { href: l.qr_url, target: '_blank', rel: 'noopener' }, 'PNG'), ' ',
            h('a', { href: `${l.qr_url}${l.qr_url.includes('?') ? '&' : '?'}format=svg`, target: '_blank', rel: 'noopener' }, 'SVG'))))))));
    } catch (e) { fill(list, errorBox(e)); }
  }
  async function add() {
    fill(err);
    try {
      const body = { url: url.value.trim(), channel: channel.value.trim(), broadcast_id: b.id };
      if (campaign.value.trim()) body.campaign = campaign.value.trim();
      await api('POST', '/v1/links', body);
      url.value = '';
      await load();
    } catch (e) { fill(err, errorBox(e)); }
  }
  load();
  return h('section', { class: 'card', 'aria-labelledby': 'tl-h' }, h('h2', { id: 'tl-h' }, t('tracked_links')),
    h('p', { class: 'muted' }, t('tracked_links_help')), list,
    h('datalist', { id: 'link-channels' }, ['inbox', 'email', 'sms', 'wecom', 'webhook', 'poster', 'qr'].map((c) => h('option', { value: c }))),
    h('div', { class: 'row' },
      h('div', {}, h('label', { for: 'link-url' }, t('url')), url),
      h('div', {}, h('label', { for: 'link-channel' }, t('channels')), channel),
      h('div', {}, h('label', { for: 'link-campaign' }, t('campaign')), campaign),
      h('button', { type: 'button', id: 'add-link', onclick: add }, t('add_link'))), err);
}

let events = null;
let poller = null;
// Called when an action changes the broadcast's state (send, approve…).
let followState = () => {};
async function broadcastPage(view, id) {
  const b = await api('GET', `/v1/broadcasts/${encodeURIComponent(id)}`);
  const verdictsBox = h('div', { id: 'preflight-out', 'aria-live': 'polite' });
  const actions = h('div', { class: 'row' });
  const err = h('div');
  const progress = h('div', {}, bars(b));
  const state = h('span', { id: 'state' }, stateBadge(b.state));
  const code = h('input', { type: 'text', id: 'verification-code', inputmode: 'numeric' });
  const comment = h('input', { type: 'text', id: 'approval-comment' });
  async function preflight() {
    try {
      const r = await api('POST', `/v1/broadcasts/${id}/preflight`);
      fill(verdictsBox, h('p', {}, h('strong', { id: 'preflight-ok' }, r.ok ? t('ok_to_send') : t('blocked')),
        ` · ${t('recipients')}: `, h('span', { id: 'preflight-recipients' }, r.recipients.toLocaleString())), verdictList(r.verdicts));
    } catch (e) { fill(verdictsBox, errorBox(e)); }
  }
  async function act(path, body) {
    fill(err);
    try {
      const r = await api('POST', `/v1/broadcasts/${id}/${path}`, body);
      const x = r.id ? r : await api('GET', `/v1/broadcasts/${id}`);
      render(x);
      followState(x.state);
    } catch (e) {
      fill(err, errorBox(e));
      if (Array.isArray(e.body?.details) && e.body.details.length && e.body.details[0].severity) {
        fill(verdictsBox, verdictList(e.body.details));
      }
    }
  }
  let shown = null;
  const results = h('div', {}, rates(b));
  const report = h('div', { 'aria-live': 'polite' });
  let reportShown = 0;
  function render(x) {
    fill(progress, bars(x));
    fill(results, rates(x));
    // The full report once something went out, at most every 10 s.
    if (x.state !== 'draft' && x.counts.delivered > 0 && Date.now() - reportShown > 10_000) {
      reportShown = Date.now();
      reportSection(id).then((r) => fill(report, r)).catch((e) => fill(report, errorBox(e)));
    }
    // Buttons are rebuilt only when the state changes: progress events
    // must not take the focus from under the keyboard or the pointer.
    if (x.state === shown) return;
    shown = x.state;
    fill(state, stateBadge(x.state));
    fill(actions,
      x.state === 'draft' ? [h('div', {}, h('label', { for: 'verification-code' }, t('verification_code')), code),
        h('button', { type: 'button', class: 'primary', id: 'send', onclick: () => act('send', code.value.trim() ? { verification_code: code.value.trim() } : {}) }, t('send'))] : null,
      x.state === 'pending_approval' ? [h('div', {}, h('label', { for: 'approval-comment' }, t('comment')), comment),
        h('button', { type: 'button', class: 'primary', id: 'approve', onclick: () => act('approve', comment.value ? { comment: comment.value } : {}) }, t('approve')),
        h('button', { type: 'button', class: 'danger', id: 'reject', onclick: () => act('reject', comment.value ? { comment: comment.value } : {}) }, t('reject'))] : null,
      ['sending', 'completed'].includes(x.state) && me.workspace_kind === 'personal'
        ? h('button', { type: 'button', class: 'danger', id: 'recall', onclick: () => act('recall', {}) }, t('recall')) : null,
      ['sending', 'completed', 'paused'].includes(x.state) ? h('a', { href: `/v1/broadcasts/${id}/evidence`, id: 'evidence' }, t('evidence')) : null);
    fill(scheduleBox, x.state === 'draft' && ['owner', 'admin'].includes(me.role) && me.workspace_kind !== 'personal' ? scheduleForm() : null,
      x.state === 'scheduled' ? [h('p', { id: 'scheduled' }, `${t('scheduled_for')}: `, h('span', { id: 'schedule-at' })),
        h('button', { type: 'button', id: 'unschedule', onclick: async () => {
          try { await api('DELETE', `/v1/broadcasts/${id}/schedule`); render(await api('GET', `/v1/broadcasts/${id}`)); } catch (e) { fill(err, errorBox(e)); }
        } }, t('unschedule'))] : null);
    if (x.state === 'scheduled') {
      api('GET', `/v1/broadcasts/${id}/schedule`).then(({ schedule: sc }) => {
        const at = document.getElementById('schedule-at');
        if (at) at.textContent = `${when(sc.next_run_at || sc.at)} ${sc.cron ? `(${sc.cron})` : ''} ${sc.time_zone || ''}`;
      }).catch(() => {});
    }
  }
  const scheduleBox = h('div', { id: 'schedule-box' });
  function scheduleForm() {
    const at = h('input', { type: 'datetime-local', id: 'schedule-time' });
    const zone = h('input', { type: 'text', id: 'schedule-zone', value: Intl.DateTimeFormat().resolvedOptions().timeZone || 'Asia/Shanghai' });
    const cron = h('input', { type: 'text', id: 'schedule-cron', placeholder: '0 9 * * MON' });
    return h('div', {}, h('h2', {}, t('schedule')), h('div', { class: 'row' },
      h('div', {}, h('label', { for: 'schedule-time' }, t('at_time')), at),
      h('div', {}, h('label', { for: 'schedule-zone' }, t('time_zone')), zone),
      h('div', {}, h('label', { for: 'schedule-cron' }, t('cron')), cron),
      h('button', { type: 'button', id: 'schedule', onclick: () => act('schedule', cron.value.trim()
        ? { cron: cron.value.trim(), time_zone: zone.value.trim() } : { at: at.value.length === 16 ? `${at.value}:00` : at.value, time_zone: zone.value.trim() }) }, t('schedule_it'))));
  }
  view.show(h('p', {}, h('a', { href: '#/broadcasts' }, `← ${t('back')}`)),
    h('h1', {}, `#${b.id} `, state),
    h('div', { class: 'card' },
      h('p', { id: 'content' }, b.content.text || b.content.title || b.content.type),
      h('p', { class: 'muted' }, `${t('channels')}: ${b.channels.join(', ')} · ${t('created')}: ${when(b.created_at)}`)),
    h('section', { class: 'card', 'aria-labelledby': 'pf-h' }, h('h2', { id: 'pf-h' }, t('preflight')), verdictsBox,
      h('button', { type: 'button', onclick: preflight }, t('run_preflight'))),
    h('section', { class: 'card' }, actions, scheduleBox, err),
    h('section', { class: 'card', 'aria-labelledby': 'pr-h' }, h('h2', { id: 'pr-h' }, t('progress_live')), progress),
    h('section', { class: 'card', 'aria-labelledby': 'rs-h' }, h('h2', { id: 'rs-h' }, t('results')), results, report),
    ['owner', 'admin', 'sender'].includes(me.role) ? linksSection(b) : null);
  render(b);
  if (b.state === 'draft') preflight();
  if (!view.current()) return;
  // Live progress over server-sent events while it goes out (the session
  // cookie authenticates them); reads and replies of a finished send are
  // polled every 10 s; a draft waits for its send.
  const live = ['sending', 'paused', 'pending_approval', 'scheduled'];
  function follow(state) {
    stopEvents();
    if (live.includes(state)) {
      events = new EventSource(`/v1/broadcasts/${encodeURIComponent(id)}/events`);
      events.addEventListener('progress', (ev) => {
        let x;
        try { x = JSON.parse(ev.data); } catch { return; }
        render(x);
        if (!live.includes(x.state)) follow(x.state);
      });
    } else if (['completed', 'cancelled', 'blocked'].includes(state)) {
      poller = setInterval(async () => {
        if (!view.current()) { stopEvents(); return; }
        try { render(await api('GET', `/v1/broadcasts/${encodeURIComponent(id)}`)); } catch { /* keep the last */ }
      }, 10_000);
    }
  }
  followState = follow;
  follow(b.state);
}

async function broadcastsPage(view, filter) {
  const data = await api('GET', '/v1/broadcasts?limit=100');
  const items = data.items.filter((b) => !filter || b.state === filter);
  view.show(h('h1', {}, filter ? t('pending') : t('broadcasts')),
    items.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'broadcasts' },
      h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, t('text')), h('th', {}, t('state')),
        h('th', {}, t('recipients')), h('th', {}, t('read')), h('th', {}, t('created')))),
      h('tbody', {}, items.map((b) => h('tr', {},
        h('td', {}, h('a', { href: `#/broadcasts/${b.id}` }, b.id)),
        h('td', {}, (b.content.text || b.content.title || b.content.type || '').slice(0, 80)),
        h('td', {}, stateBadge(b.state)), h('td', {}, b.recipients.toLocaleString()),
        h('td', {}, b.counts.read.toLocaleString()), h('td', {}, when(b.created_at)))))))
      : h('p', { class: 'muted' }, t('none')));
}

async function auditPage(view) {
  const data = await api('GET', '/v1/audit?limit=200');
  view.show(h('h1', {}, t('audit')), h('div', { class: 'table-wrap' }, h('table', { id: 'audit' },
    h('thead', {}, h('tr', {}, h('th', {}, t('at')), h('th', {}, t('actor')), h('th', {}, t('action')), h('th', {}, t('target')))),
    h('tbody', {}, data.items.map((e) => h('tr', {}, h('td', {}, when(e.at)), h('td', {}, e.actor),
      h('td', {}, e.action), h('td', {}, e.subject)))))));
}

async function healthPage(view) {
  const r = await api('GET', `/v1/members/${me.member_id}/health`);
  view.show(h('h1', {}, t('health')), h('div', { class: 'card', id: 'health' },
    h('p', {}, term(r.state), ` ${t('score')}: `, h('strong', {}, r.score.toFixed(0))),
    h('h2', {}, t('reasons')),
    r.override_reason ? h('p', {}, r.override_reason) : null,
    (r.reasons || []).length ? h('ul', {}, r.reasons.map((x) => h('li', {}, lang === 'zh' ? x.message_zh : x.message,
      h('span', { class: 'muted' }, ` (−${x.penalty})`))))
      : h('p', { class: 'ok' }, t('no_verdicts'))),
    securityCard(), passwordCard());
}

// Sender security: this browser's login and a one-time code an admin issued
// when it is abnormal (POST /v1/security/verify).
function securityCard() {
  const out = h('div', { id: 'login-state', 'aria-live': 'polite' });
  const code = h('input', { type: 'text', id: 'login-code', inputmode: 'numeric', autocomplete: 'one-time-code' });
  const showState = (r) => fill(out, h('p', {}, `${t('this_login')}: `, term(r.state),
    h('span', { class: 'muted' }, ` · ${r.device} · ${r.network}`)));
  api('POST', '/v1/sessions', {}).then(showState).catch((e) => fill(out, errorBox(e)));
  return h('section', { class: 'card', 'aria-labelledby': 'sec-h' }, h('h2', { id: 'sec-h' }, t('login_security')), out,
    h('div', { class: 'row' },
      h('div', {}, h('label', { for: 'login-code' }, t('login_code')), code),
      h('button', { type: 'button', id: 'verify-login', onclick: async () => {
        try { showState(await api('POST', '/v1/security/verify', { code: code.value.trim() })); code.value = ''; } catch (e) { fill(out, errorBox(e)); }
      } }, t('verify'))));
}

function passwordCard() {
  const current = h('input', { type: 'password', id: 'current-password', autocomplete: 'current-password' });
  const next = h('input', { type: 'password', id: 'new-password', autocomplete: 'new-password', minlength: 10 });
  const out = h('div', { 'aria-live': 'polite' });
  return h('section', { class: 'card', 'aria-labelledby': 'pw-h' }, h('h2', { id: 'pw-h' }, t('change_password')),
    h('label', { for: 'current-password' }, t('current_password')), current,
    h('label', { for: 'new-password' }, t('new_password')), next,
    h('p', {}, h('button', { type: 'button', id: 'change-password', onclick: async () => {
      try {
        await api('PUT', `/v1/members/${me.member_id}/login`, { login: me.login, password: next.value, current_password: current.value });
        // A new password ends every session, this one too.
        me = null;
        location.hash = '#/login';
      } catch (e) { fill(out, errorBox(e)); }
    } }, t('change_password'))), out);
}

async function tagsPage(view) {
  const [report, departments] = await Promise.all([api('GET', '/v1/tags/report'), api('GET', '/v1/departments')]);
  const path = h('input', { type: 'text', id: 'new-tag', placeholder: '客户等级/金牌/华东' });
  const err = h('div');
  const tree = (nodes) => h('ul', {}, nodes.map((d) => h('li', {}, `${d.name} (${d.n_contacts})`,
    d.children.length ? tree(d.children) : null)));
  view.show(h('h1', {}, t('tags_page')),
    h('div', { class: 'card' }, h('div', { class: 'row' },
      h('div', { style: 'flex:1' }, h('label', { for: 'new-tag' }, t('new_tag')), path),
      h('button', { type: 'button', class: 'primary', id: 'create-tag', onclick: async () => {
        try { await api('POST', '/v1/tags', { path: path.value.trim() }); route(); } catch (e) { fill(err, errorBox(e)); }
      } }, t('create'))), err),
    h('h2', {}, `${t('tags')} · ${report.n_dormant} ${t('n_dormant')}`),
    h('div', { class: 'table-wrap' }, h('table', { id: 'tags' },
      h('thead', {}, h('tr', {}, h('th', {}, t('tags')), h('th', {}, t('size')), h('th', {}, t('own')),
        h('th', {}, t('last_used')), h('th', {}, ''))),
      h('tbody', {}, report.items.map((i) => h('tr', {},
        h('td', {}, h('a', { href: '#/audience', onclick: () => sessionStorage.setItem('qunfa.expr', `tag:"${i.path.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`) }, i.path)),
        h('td', {}, i.size.toLocaleString()), h('td', {}, i.n_contacts.toLocaleString()), h('td', {}, when(i.last_used_at)),
        h('td', {}, i.dormant ? h('span', { class: 'badge warn' }, t('dormant')) : null)))))),
    h('h2', {}, t('departments')), departments.length ? h('div', { class: 'card', id: 'departments' }, tree(departments)) : h('p', { class: 'muted' }, t('none')));
}

async function reviewsPage(view) {
  const data = await api('GET', '/v1/safety/reviews?state=pending&limit=100');
  view.show(h('h1', {}, t('pending_reviews')), data.reviews.length ? h('div', { id: 'reviews' }, data.reviews.map((r) => {
    const reason = h('input', { type: 'text', 'aria-label': t('reason') });
    const out = h('div');
    const decide = (what) => async () => {
      try {
        await api('POST', `/v1/safety/reviews/${r.id}/${what}`, reason.value ? { reason: reason.value } : {});
        route();
      } catch (e) { fill(out, errorBox(e)); }
    };
    return h('div', { class: 'card' },
      h('p', {}, h('a', { href: `#/broadcasts/${r.broadcast_id}` }, `#${r.broadcast_id}`), ' ',
        h('span', { class: 'muted' }, `${t('risk')} ${r.risk.toFixed(2)} · ${when(r.created_at)}`)),
      h('div', { class: 'highlight' }, highlighted(r.text, r.hits)),
      h('ul', {}, r.hits.map((hit) => h('li', {}, term(hit.action), ' ',
        lang === 'zh' ? hit.message_zh : hit.message))),
      h('div', { class: 'row' }, h('div', { style: 'flex:1' }, reason),
        h('button', { type: 'button', class: 'primary', onclick: decide('approve') }, t('approve')),
        h('button', { type: 'button', class: 'danger', onclick: decide('reject') }, t('reject'))), out);
  })) : h('p', { class: 'muted' }, t('none')));
}

// ---------------------------------------------------------------- router
// Each navigation gets a view; a page that finishes after the user moved on
// draws nothing (its view is no longer current).
let routeSeq = 0;
function stopEvents() {
  if (events) { events.close(); events = null; }
  clearInterval(poller);
}
async function route() {
  const mine = ++routeSeq;
  const view = {
    current: () => mine === routeSeq,
    show: (...nodes) => { if (mine === routeSeq) fill(main(), ...nodes); },
  };
  stopEvents();
  const hash = location.hash && location.hash.startsWith('#/') ? location.hash : '#/contacts';
  if (hash === '#/login') { me = null; nav(null); loginPage(view); return; }
  if (!me) await loadSession();
  if (!view.current()) return;
  if (!me) { location.hash = '#/login'; return; }
  const parts = hash.slice(2).split('/');
  nav(`#/${parts[0]}`);
  try {
    switch (parts[0]) {
      case 'contacts': await (parts[1] ? contactPage(view, parts[1]) : contactsPage(view)); break;
      case 'audience': audiencePage(view); break;
      case 'compose': composePage(view); break;
      case 'broadcasts': await (parts[1] ? broadcastPage(view, parts[1]) : broadcastsPage(view)); break;
      case 'approvals': await broadcastsPage(view, 'pending_approval'); break;
      case 'tags': await tagsPage(view); break;
      case 'reviews': await reviewsPage(view); break;
      case 'audit': await auditPage(view); break;
      case 'health': await healthPage(view); break;
      default: location.hash = '#/contacts';
    }
  } catch (e) {
    view.show(errorBox(e));
  }
  if (view.current() && !main().contains(document.activeElement)) main().focus({ preventScroll: true });
}
// The skip link moves the focus, not the route.
document.querySelector('.skip')?.addEventListener('click', (ev) => { ev.preventDefault(); main().focus(); });
window.addEventListener('hashchange', route);
route();
