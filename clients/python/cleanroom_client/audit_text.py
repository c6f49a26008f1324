"""The auditor's report's words in English and Simplified Chinese, on top of the member report's (`report_text`).

Query types are named by their declarations (`Text.query`), so a new query type is labelled in both languages
without a word here; the labels of dimensions and values are the member report's.
"""

from __future__ import annotations

from .report_text import Text, text_for

_EN: dict[str, str] = {
    "a.title": "Audit report: {collaboration}",
    "a.intro": "Read from the collaboration's audit chain: every entry is signed by the server and linked to the one "
    "before, so a changed, removed or reordered entry breaks the chain. Each row names the entry it comes from (#).",
    "a.epsilon": "ε and δ are the privacy budget: each answered query spends ε (and δ) of its member's cap, which the "
    "policy fixes; a refusal before data is read spends nothing.",
    "v.valid": "Verified: all {n} entries are intact and signed by the server, up to the signed head at entry {seq} "
    "(hash {hash}).",
    "v.broken": "NOT VERIFIED: the chain breaks at entry {seq}: {reason}. Everything below is read from the export "
    "as it is; rows from entry {seq} on are marked unverified.",
    "v.tree": "Merkle tree head: {size} entries, root {root}.",
    "v.no_tree": "The export carries no Merkle tree head.",
    "v.head.True": "{source} head ({size} entries): consistent — {detail}.",
    "v.head.False": "{source} head ({size} entries): INCONSISTENT — {detail}.",
    "v.head.None": "{source} head ({size} entries): cannot be judged — {detail}.",
    "v.valid_unanchored": "Signed, but not checked against any earlier head: all {n} entries are intact and signed "
    "by the server up to the signed head at entry {seq} (hash {hash}); with no head saved before to compare, this "
    "cannot show that no entry was cut from the end or rewritten by whoever holds the server's key (the operator).",
    "v.no_heads": "No head saved before was compared (your own, --remember, or another member's, --head): a log cut "
    "short or rewritten and signed again with the server's key would read exactly like this one. Keep this export's "
    "head (cleanroom-client audit head COLLABORATION --to FILE) to check the next export against.",
    "h.remembered": "Your remembered",
    "h.server": "The server's current",
    "h.other": "{who}'s exported",
    "s.policy": "Policy and its revisions",
    "sum.policy": "{revisions} revision(s); the latest, revision {revision} ({etag}), was approved by {approved} of "
    "{members} members.",
    "sum.policy_current": " The policy read now has etag {etag}: {match}.",
    "p.match": "it is the latest revision approved in the log",
    "p.mismatch": "it is NOT the latest revision approved in the log",
    "s.budget_audit": "Privacy budget spent per member",
    "sum.budget_audit": "{lines}",
    "sum.budget_member": "{member} spent ε {eps:g} and δ {dlt:g}{cap}",
    "sum.cap": " of a cap of ε {eps:g} and δ {dlt:g}",
    "sum.no_caps": " (the caps are not known: pass --policy FILE)",
    "sum.per_period": " (per refresh period: the budget renews when a refresh changes data; shown for the period now)",
    "sum.no_spend": "No budget has been spent.",
    "y.spent": "spent since the budget began (cumulative)",
    "x.time": "time (UTC)",
    "s.queries": "Every query",
    "sum.queries": "{n} queries: {answered} answered, {refused} refused, {failed} charged and failed, {previews} "
    "previews (free, nothing read).",
    "s.data": "Uploads and matches (sizes only)",
    "sum.data": "{uploads} uploads and {matches} match(es); the log keeps sizes, never contents.",
    "s.periods": "Refresh periods and retirements",
    "sum.periods": "{complete} refresh period(s) completed, {retire} retirement(s).",
    "s.audiences_audit": "Audiences released and fetched",
    "sum.audiences_audit": "{released} audience(s) released, fetched {fetched} time(s). The released size is in the "
    "answer, which the log keeps as a hash.",
    "s.auditors": "Auditor assignments",
    "sum.auditors": "{n} assignment(s).",
    "s.anomalies": "For an auditor to look at",
    "sum.anomalies": "{n} finding(s); each names the entries to read. A finding is a pattern to check, not a verdict.",
    "sum.no_anomalies": "Nothing found by the rules (refusal bursts, repeated queries, previews, budget near its cap, "
    "queries right after a refresh).",
    "empty_table": "none",
    "o.answered": "answered",
    "o.refused": "refused",
    "o.charged_failed": "charged, failed",
    "o.charged_interrupted": "charged, interrupted",
    "o.preview": "preview",
    "k.refusal_burst": "Refusal burst: {count} refusals in a short time (probing the policy?)",
    "k.unapproved": "{count} queries answered while revision {revision} of the policy lacked the approval of "
    "{missing} (the server lets data flow only under a revision every member approved)",
    "k.refusals": "Many refusals: {count} in all, however far apart (probing the policy slowly?)",
    "k.repeated_query": "Repeated query: the same {query} asked {count} times, ε {epsilon:g} in all (averaging?)",
    "k.previews": "Previews far above queries: {previews} previews, {answered} answered",
    "k.budget_near_cap": "Budget close to exhausted: {measure} {spent:g} of {cap:g}",
    "k.after_refresh": "{count} queries right after refresh period {period} completed (differencing?)",
    "all_members": "every member",
    "unverified": "unverified",
    "yes": "yes",
}

_ZH: dict[str, str] = {
    "a.title": "审计报告：{collaboration}",
    "a.intro": "以下内容读自本合作的审计链：每条记录都有服务器签名，并与上一条相连，任何记录被修改、删除或调换顺序都会"
    "使链断开。每一行都注明了它所依据的记录编号（#）。",
    "a.epsilon": "ε 和 δ 是隐私预算：每次得到回答的查询都会消耗该成员额度中的 ε（和 δ），额度由策略规定；"
    "在读取数据之前被拒绝的查询不消耗预算。",
    "v.valid": "验证通过：全部 {n} 条记录完整且由服务器签名，直至第 {seq} 条记录处的签名链头（哈希 {hash}）。",
    "v.broken": "验证未通过：审计链在第 {seq} 条记录处断开：{reason}。以下内容按导出文件原样读取；"
    "第 {seq} 条及之后的行均标记为未验证。",
    "v.tree": "Merkle 树头：{size} 条记录，根 {root}。",
    "v.no_tree": "导出文件中没有 Merkle 树头。",
    "v.head.True": "{source}链头（{size} 条记录）：一致——{detail}。",
    "v.head.False": "{source}链头（{size} 条记录）：不一致——{detail}。",
    "v.head.None": "{source}链头（{size} 条记录）：无法判断——{detail}。",
    "v.valid_unanchored": "已签名，但未与任何先前的链头比对：全部 {n} 条记录完整且由服务器签名，直至第 {seq} 条记录处的"
    "签名链头（哈希 {hash}）；由于没有先前保存的链头可比对，无法证明末尾没有记录被删去，也无法证明持有服务器密钥者"
    "（运营方）没有改写日志。",
    "v.no_heads": "未比对任何先前保存的链头（您自己的 --remember，或其他成员的 --head）：被截短或改写后用服务器密钥重新"
    "签名的日志，看起来会与此完全相同。请保存本次导出的链头（cleanroom-client audit head 合作 --to 文件），"
    "用于核对下一次导出。",
    "h.remembered": "您记住的",
    "h.server": "服务器当前的",
    "h.other": "{who} 导出的",
    "s.policy": "策略及其修订",
    "sum.policy": "共 {revisions} 个修订；最新的修订 {revision}（{etag}）已获 {members} 个成员中的 {approved} 个批准。",
    "sum.policy_current": " 当前读取的策略 etag 为 {etag}：{match}。",
    "p.match": "与日志中最新获批的修订一致",
    "p.mismatch": "与日志中最新获批的修订不一致",
    "s.budget_audit": "各成员的隐私预算消耗",
    "sum.budget_audit": "{lines}",
    "sum.budget_member": "{member} 消耗 ε {eps:g}、δ {dlt:g}{cap}",
    "sum.cap": "，额度为 ε {eps:g}、δ {dlt:g}",
    "sum.no_caps": "（额度未知：请使用 --policy FILE）",
    "sum.per_period": "（按刷新周期：刷新改变数据后预算重新计算；显示当前周期）",
    "sum.no_spend": "尚未消耗任何预算。",
    "y.spent": "自预算起算以来的累计消耗",
    "x.time": "时间（UTC）",
    "s.queries": "全部查询",
    "sum.queries": "共 {n} 次查询：{answered} 次已回答，{refused} 次被拒绝，{failed} 次已扣费但失败，{previews} 次预览"
    "（免费，不读取数据）。",
    "s.data": "上传与匹配（仅规模）",
    "sum.data": "{uploads} 次上传，{matches} 次匹配；日志只记录规模，不记录内容。",
    "s.periods": "刷新周期与用户退出",
    "sum.periods": "完成 {complete} 个刷新周期，{retire} 次用户退出。",
    "s.audiences_audit": "人群包的发布与领取",
    "sum.audiences_audit": "发布 {released} 个人群包，领取 {fetched} 次。发布的人数在答案中，日志只保存其哈希。",
    "s.auditors": "审计员指派",
    "sum.auditors": "共 {n} 次指派。",
    "s.anomalies": "需要审计员关注的事项",
    "sum.anomalies": "发现 {n} 项；每项都列出需查看的记录。这些是需要核查的模式，而非结论。",
    "sum.no_anomalies": "规则未发现异常（集中拒绝、重复查询、预览、预算将尽、刷新后立即查询）。",
    "empty_table": "无",
    "o.answered": "已回答",
    "o.refused": "被拒绝",
    "o.charged_failed": "已扣费，失败",
    "o.charged_interrupted": "已扣费，中断",
    "o.preview": "预览",
    "k.refusal_burst": "集中拒绝：短时间内被拒绝 {count} 次（在试探策略边界？）",
    "k.unapproved": "策略修订 {revision} 尚未获得 {missing} 批准时，回答了 {count} 次查询（服务器只应在每个成员都批准的"
    "修订下让数据流动）",
    "k.refusals": "多次被拒绝：共 {count} 次，无论间隔多久（在缓慢试探策略边界？）",
    "k.repeated_query": "重复查询：相同的{query}查询了 {count} 次，共 ε {epsilon:g}（取平均？）",
    "k.previews": "预览远多于查询：{previews} 次预览，{answered} 次回答",
    "k.budget_near_cap": "预算将尽：{measure} 已用 {spent:g}，额度 {cap:g}",
    "k.after_refresh": "刷新周期 {period} 完成后立即查询 {count} 次（差分？）",
    "all_members": "全部成员",
    "unverified": "未验证",
    "yes": "是",
}

#: Column headers of the report's tables.
_COLUMNS_EN: dict[str, str] = {
    "sequence": "#",
    "time": "time (UTC)",
    "member": "member",
    "event": "event",
    "revision": "revision",
    "etag": "etag",
    "query": "query",
    "dimensions": "dimensions",
    "population": "population",
    "epsilon": "ε",
    "delta": "δ",
    "outcome": "outcome",
    "reason": "reason",
    "kind": "kind",
    "rows": "rows",
    "points": "points",
    "period": "period",
    "set_sizes": "set sizes",
    "recipient": "to",
    "size_asked": "size asked",
    "gate_min_size": "gate (min. size)",
    "audience": "audience",
    "auditor": "auditor",
    "by": "by",
    "sequences": "entries",
    "finding": "finding",
    "verified": "verified",
}

_COLUMNS_ZH: dict[str, str] = {
    "sequence": "#",
    "time": "时间（UTC）",
    "member": "成员",
    "event": "事件",
    "revision": "修订",
    "etag": "etag",
    "query": "查询",
    "dimensions": "维度",
    "population": "人群",
    "epsilon": "ε",
    "delta": "δ",
    "outcome": "结果",
    "reason": "原因",
    "kind": "类型",
    "rows": "行数",
    "points": "点数",
    "period": "周期",
    "set_sizes": "集合规模",
    "recipient": "接收方",
    "size_asked": "申请人数",
    "gate_min_size": "门槛（最小人数）",
    "audience": "人群包",
    "auditor": "审计员",
    "by": "指派人",
    "sequences": "记录",
    "finding": "发现",
    "verified": "已验证",
}

#: Events of the facts' tables.
_EVENTS_ZH: dict[str, str] = {
    "created": "创建",
    "proposed": "提议",
    "approved": "批准",
    "upload": "上传",
    "match": "匹配",
    "open": "开启",
    "complete": "完成",
    "cancel": "取消",
    "retire": "用户退出",
    "released": "已发布",
    "fetched": "已领取",
}


def audit_text_for(lang: str) -> Text:
    """The member report's words for `lang` with the auditor's added (column headers as `col.<name>`)."""
    base = text_for(lang)
    own, columns = (_EN, _COLUMNS_EN) if lang == "en" else (_ZH, _COLUMNS_ZH)
    events = {} if lang == "en" else {f"ev.{k}": v for k, v in _EVENTS_ZH.items()}
    words = base.strings | own | {f"col.{k}": v for k, v in columns.items()} | events
    return Text(base.lang, words, base.labels)
