//! Who may publish and subscribe to what: the permission table, as data.
//!
//! nats-server enforces it: `sagefed init` writes it into the server config
//! ([`crate::nats::server_config`]), one user per identity. `subjects.md` carries the same
//! table, rendered by [`markdown_table`] (a test keeps the two equal). A platform holding
//! valid credentials is assumed hostile: whatever this table lets it do, it can do.

use crate::nats::subjects::{self as s};

/// What an identity is in the federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The ledger service: the only writer of the ledger bucket, the only server of
    /// `sage.ledger.*`, and the owner of the streams and buckets (it creates them).
    Ledger,
    /// A ledger admin (Treasury): grants ATP; reads everything a platform reads.
    Admin,
    /// A platform (Legion, Thor, Sprout): delegates, executes its own queue, settles.
    Platform,
    /// A platform the root did not grant `federation:delegate`: it executes and settles, but
    /// the server refuses its tasks and locks. Granted at `sagefed init`, not claimed.
    Executor,
    /// A platform the root granted `federation:critical` besides `federation:delegate`: it may
    /// also queue critical tasks, on the lane every worker drains before its normal queue.
    Critical,
}

impl Role {
    /// Whether identities of this role run a platform's worker (and get a platform bundle).
    pub fn is_platform(self) -> bool {
        matches!(self, Role::Platform | Role::Executor | Role::Critical)
    }

    /// Whether the root grants this role `federation:delegate`.
    pub fn delegates(self) -> bool {
        matches!(self, Role::Platform | Role::Critical)
    }

    /// Whether the root grants this role `federation:critical`.
    pub fn critical(self) -> bool {
        self == Role::Critical
    }

    /// The platform role of a platform that may delegate (`delegate`) and queue critical
    /// tasks (`critical`; only with `delegate`).
    pub fn platform(delegate: bool, critical: bool) -> Role {
        match (delegate, critical) {
            (true, true) => Role::Critical,
            (true, false) => Role::Platform,
            (false, _) => Role::Executor,
        }
    }
}

/// The subjects one identity may publish and subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    /// Subjects it may not publish although `publish` matches them: the hub's proof rule
    /// ([`crate::nats::topology::hub_permissions`]) needs a wide allow with holes.
    pub publish_deny: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer requests it received (to their reply subject, once): services do.
    pub allow_responses: bool,
}

/// Buckets every identity reads (gets, watches): the ledger is public to its members.
const READABLE_BUCKETS: [&str; 5] = [
    s::LEDGER_BUCKET,
    s::KEYS_BUCKET,
    s::PLATFORMS_BUCKET,
    s::REPUTATION_BUCKET,
    s::TASKS_BUCKET,
];

/// Reading buckets, their stream information, and the own inbox: every identity does this.
fn reader(inbox_token: &str) -> Permissions {
    let mut publish = vec![
        s::JS_API_INFO.to_owned(),
        s::JS_API_STREAM_INFO_ANY.to_owned(),
        s::JS_FLOW_CONTROL_ALL.to_owned(),
        s::SERVICE_DISCOVERY_ALL.to_owned(),
        s::status_any(),
    ];
    for bucket in READABLE_BUCKETS {
        let stream = s::kv_stream(bucket);
        publish.push(s::js_direct_get(&stream));
        publish.push(s::all_under(&s::js_direct_get(&stream)));
        publish.push(s::js_msg_get(&stream));
        publish.extend(s::js_consumer_create_any(&stream));
    }
    Permissions {
        publish,
        publish_deny: Vec::new(),
        subscribe: vec![s::all_under(&s::inbox_prefix(inbox_token))],
        allow_responses: false,
    }
}

/// The permissions of identity `name` with role `role`, whose connections use the inbox
/// prefix built from `inbox_token` (its NATS public key): [`reader`]'s and its role's.
pub fn permissions(role: Role, name: &str, inbox_token: &str) -> Permissions {
    let mut p = reader(inbox_token);
    let own = role_permissions(role, name);
    p.publish.extend(own.publish);
    p.subscribe.extend(own.subscribe);
    p.allow_responses = own.allow_responses;
    p
}

/// What the ledger may do: write the ledger and reputation buckets, serve `sage.ledger.*`.
fn ledger_role(p: &mut Permissions) {
    p.publish.extend([
        s::JS_API_ALL.to_owned(),
        s::kv_pattern(s::LEDGER_BUCKET, ">"),
        // Reputation rests on the settlements the ledger applies: nobody else writes it.
        s::kv_pattern(s::REPUTATION_BUCKET, ">"),
    ]);
    p.subscribe
        .extend([s::ledger_any(), s::SERVICE_DISCOVERY_ALL.to_owned()]);
    p.allow_responses = true;
}

/// What `role` may do on top of what every identity may ([`reader`]).
fn role_permissions(role: Role, name: &str) -> Permissions {
    let mut p = Permissions {
        publish: Vec::new(),
        publish_deny: Vec::new(),
        subscribe: Vec::new(),
        allow_responses: false,
    };
    match role {
        Role::Ledger => ledger_role(&mut p),
        Role::Admin => {
            p.publish.extend([
                s::ledger_endpoint("grant"),
                s::kv_pattern(s::KEYS_BUCKET, &format!("{name}.*")),
                // The root's revocations (`sagefed keys revoke`): out of every platform's
                // reach, so a thief holding a platform's credentials cannot delete one.
                s::kv_pattern(s::KEYS_BUCKET, &s::key_revocations_pattern()),
                // The operator reads the dead letters (`nats stream view SAGE_DEAD`).
                s::js_msg_get(s::DEAD_STREAM),
            ]);
            p.publish.extend(s::js_consumer_create_any(s::DEAD_STREAM));
            p.publish
                .extend(s::JS_API_OPERATOR_READS.iter().map(|x| (*x).to_owned()));
        }
        Role::Platform | Role::Executor | Role::Critical => platform_permissions(role, name, &mut p),
    }
    p
}

/// What a platform of `role` (delegating, executor-only or critical) may do, added to `p`.
fn platform_permissions(role: Role, name: &str, p: &mut Permissions) {
    if role.delegates() {
        // federation:delegate: queue tasks for others and lock ATP for them.
        // And hand a held task to the witness the ledger appointed for it.
        p.publish
            .extend([s::delegate_any(), s::ledger_endpoint("lock"), s::witness_request_any()]);
        // Keep and read back its own witnessed tasks (a restarted delegator dispatches them);
        // the direct get names the key, so no platform reads or writes another's.
        let own_tasks = s::witnessed_task_keys_of(name);
        p.publish.extend([
            s::kv_pattern(s::WITNESSED_TASKS_BUCKET, &own_tasks),
            s::js_direct_get_subject(
                &s::kv_stream(s::WITNESSED_TASKS_BUCKET),
                &s::kv_subject(s::WITNESSED_TASKS_BUCKET, &own_tasks),
            ),
        ]);
    }
    if role.critical() {
        // federation:critical: queue tasks on others' critical lanes.
        p.publish.push(s::critical_any());
    }
    let worker = s::worker_consumer(name);
    let critical = s::critical_consumer(name);
    let settle = s::settle_consumer(name);
    p.publish.extend([
        // Proofs only under its own name: a task's slot belongs to its executor.
        s::proofs_by(name),
        s::dead_letter(name),
        s::abort_any(),
        s::ledger_endpoint("commit"),
        s::ledger_endpoint("rollback"),
        s::ledger_endpoint("witness"),
        s::kv_pattern(s::KEYS_BUCKET, &format!("{name}.*")),
        s::kv_pattern(s::PLATFORMS_BUCKET, name),
        s::js_consumer_create(s::TASKS_STREAM, &worker, &s::delegate(name)),
        s::js_consumer_info(s::TASKS_STREAM, &worker),
        s::js_consumer_next(s::TASKS_STREAM, &worker),
        s::js_ack(s::TASKS_STREAM, &worker),
        s::js_consumer_create(s::TASKS_STREAM, &critical, &s::critical(name)),
        s::js_consumer_info(s::TASKS_STREAM, &critical),
        s::js_consumer_next(s::TASKS_STREAM, &critical),
        s::js_ack(s::TASKS_STREAM, &critical),
        s::js_consumer_create(s::PROOFS_STREAM, &settle, &s::proofs_for(name)),
        s::js_consumer_info(s::PROOFS_STREAM, &settle),
        s::js_consumer_next(s::PROOFS_STREAM, &settle),
        s::js_ack(s::PROOFS_STREAM, &settle),
        s::js_direct_get_subject(s::PROOFS_STREAM, &s::proofs_for(name)),
    ]);
    // Its own parts of task statuses only (as delegator and as executor).
    p.publish.extend(
        s::task_part_writer(name)
            .iter()
            .map(|key| s::kv_pattern(s::TASKS_BUCKET, key)),
    );
    p.subscribe.extend([
        s::proofs_for(name),
        s::abort(name),
        s::witness_request(name),
        s::status_any(),
        s::SERVICE_DISCOVERY_ALL.to_owned(),
    ]);
    p.allow_responses = true;
}

/// Placeholder for the identity's name in the rendered table.
pub const NAME_PLACEHOLDER: &str = "<me>";
/// Placeholder for the identity's NATS public key in the rendered table.
pub const INBOX_PLACEHOLDER: &str = "<nkey>";

/// The table as `subjects.md` shows it: one row per role, placeholders for names.
pub fn markdown_table() -> String {
    let mut out = String::from("| identity | may publish | may subscribe | answers requests |\n|---|---|---|---|\n");
    let rows = [
        ("every identity, besides its role's", reader(INBOX_PLACEHOLDER)),
        ("ledger", role_permissions(Role::Ledger, NAME_PLACEHOLDER)),
        ("admin (`Treasury`)", role_permissions(Role::Admin, NAME_PLACEHOLDER)),
        ("platform `<me>`", role_permissions(Role::Platform, NAME_PLACEHOLDER)),
        (
            "executor-only platform `<me>` (no `federation:delegate`)",
            role_permissions(Role::Executor, NAME_PLACEHOLDER),
        ),
        (
            "critical platform `<me>` (`federation:delegate` and `federation:critical`)",
            role_permissions(Role::Critical, NAME_PLACEHOLDER),
        ),
    ];
    for (label, p) in rows {
        let cell = |subjects: &[String]| subjects.iter().map(|x| format!("`{x}`")).collect::<Vec<_>>().join(" ");
        out.push_str(&format!(
            "| {label} | {} | {} | {} |\n",
            cell(&p.publish),
            cell(&p.subscribe),
            if p.allow_responses { "yes" } else { "no" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_md_carries_the_generated_table() {
        let doc = include_str!("../../subjects.md");
        assert!(
            doc.contains(&markdown_table()),
            "subjects.md's permission table is out of date; paste this in:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn only_the_ledger_writes_the_ledger_or_manages_streams() {
        for role in [Role::Admin, Role::Platform] {
            let p = permissions(role, "Thor", "UTHOR");
            assert!(!p.publish.iter().any(|x| x.starts_with("$KV.sage_ledger")), "{role:?}");
            assert!(!p.publish.iter().any(|x| x == s::JS_API_ALL), "{role:?}");
            assert!(!p.subscribe.iter().any(|x| x.starts_with("sage.ledger")), "{role:?}");
        }
        let ledger = permissions(Role::Ledger, "ledger", "ULEDGER");
        assert!(ledger.publish.contains(&"$KV.sage_ledger.>".to_owned()));
    }

    #[test]
    fn only_a_critical_platform_may_publish_on_the_critical_lanes() {
        let lanes = s::critical_any();
        for role in [Role::Ledger, Role::Admin, Role::Platform, Role::Executor] {
            let p = permissions(role, "Thor", "UTHOR");
            assert!(
                !p.publish
                    .iter()
                    .any(|x| x.starts_with("sage.critical") || x == ">" || x == "sage.>"),
                "{role:?}"
            );
        }
        assert!(permissions(Role::Critical, "Thor", "UTHOR").publish.contains(&lanes));
        // Every platform consumes its own critical lane, whatever it may publish.
        for role in [Role::Platform, Role::Executor, Role::Critical] {
            let p = permissions(role, "Thor", "UTHOR");
            assert!(
                p.publish
                    .contains(&s::js_consumer_next(s::TASKS_STREAM, "critical-Thor"))
            );
        }
    }

    #[test]
    fn a_platform_reads_replies_only_on_its_own_inbox() {
        let p = permissions(Role::Platform, "Thor", "UTHOR");
        let inboxes: Vec<_> = p.subscribe.iter().filter(|x| x.starts_with("_INBOX")).collect();
        assert_eq!(inboxes, ["_INBOX.UTHOR.>"]);
    }
}
