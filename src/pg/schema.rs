//! The PostgreSQL schema and its versioned migrations.
//!
//! Two schemas: `relaylog` holds the records, the outcome events, the signed heads,
//! the erasure statements, the nodes and the ledger; `relaylog_keys` holds only the
//! partition keys (wrapped by the master key), so that it can be backed up on its own
//! schedule, or not at all (see the README: crypto-shredding on PostgreSQL).
//!
//! `record`, `posting`, `outcome` and `outcome_block` are range-partitioned on `part`,
//! the first day of the store partition a row belongs to (days since 1970-01-01): one
//! table per day (or month), created ahead of traffic and dropped whole by expiry. The
//! recipients' blind index is a B-tree on `record`, the others' posting lists
//! (migration 6); both lead with the time bucket, so that inserts land at the
//! right-hand edge of each B-tree.
//!
//! Migrations run only from `relaylog init`, in one transaction under an advisory lock
//! (two nodes initialised at once apply each version once); `serve` and
//! `check-config` refuse a database whose version is not [`VERSION`].

use postgres::GenericClient;

use super::PgError;
use crate::store::partition::PartitionId;

/// Advisory lock ids (`pg_advisory_xact_lock`), one per kind of serialised work.
pub mod lock {
    /// Migrations and node registration.
    pub const MIGRATE: i64 = 0x726c_6f67_0001;
    /// Creating and dropping partitions (expiry).
    pub const PARTITIONS: i64 = 0x726c_6f67_0002;
    /// Appending to the audit chain.
    pub const AUDIT: i64 = 0x726c_6f67_0003;
    /// One node's expiry run at a time (a session lock, held through the run).
    pub const EXPIRY: i64 = 0x726c_6f67_0004;
    /// Writing an erasure statement (its id is the tree's next).
    pub const ERASURE: i64 = 0x726c_6f67_0005;
    /// Building a closed partition's read-optimised indexes: this plus its `part`.
    pub const INDEX_BASE: i64 = 0x726c_6f68_0000_0000;
    /// Writing as a node (a session lock its writer's connection holds): this plus the
    /// node's id.
    pub const NODE_BASE: i64 = 0x726c_6f6e_0000_0000;
}

/// The schema version this relaylog reads and writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Version `n` is `MIGRATIONS[n - 1]`. Never edit one that shipped: add the next.
const MIGRATIONS: &[&str] = &[
    V1_STORE,
    V2_LEDGER,
    V3_ERASURE_SIGNER,
    V4_JOURNAL,
    V5_OUTCOME_BLOCK,
    V6_POSTING,
    V7_TRAFFIC,
    V8_DELETION,
];

const V1_STORE: &str = "
CREATE SCHEMA IF NOT EXISTS relaylog_keys;
CREATE TABLE relaylog_keys.partition_key (
    partition  text PRIMARY KEY,
    wrapped    bytea NOT NULL,
    created_us bigint NOT NULL
);
CREATE TABLE relaylog.installation (
    one          integer PRIMARY KEY CHECK (one = 1),
    master_check text NOT NULL,
    -- The store settings every node must share (see `claim_installation`).
    settings     text NOT NULL,
    created_us   bigint NOT NULL,
    -- Made by a benchmark: its records are made up (see `relaylog bench`).
    bench        boolean NOT NULL DEFAULT false
);
CREATE TABLE relaylog.node (
    id            smallint PRIMARY KEY CHECK (id > 0),
    name          text NOT NULL UNIQUE,
    public_key    bytea NOT NULL,
    registered_us bigint NOT NULL
);
CREATE TABLE relaylog.partition (
    name       text PRIMARY KEY,
    part       integer NOT NULL UNIQUE,
    end_part   integer NOT NULL,
    created_us bigint NOT NULL,
    -- When its read-optimised indexes (by tag alone) were built, once it was closed.
    indexed_us bigint
);
CREATE TABLE relaylog.record (
    part           integer  NOT NULL,
    node           smallint NOT NULL,
    id             bigint   NOT NULL,
    submission     bigint   NOT NULL,
    ordinal        integer  NOT NULL,
    at_us          bigint   NOT NULL,
    bucket         bigint   NOT NULL,
    protocol       smallint NOT NULL,
    service        smallint NOT NULL,
    recipient_form smallint NOT NULL,
    segments       integer  NOT NULL,
    account_ix     bigint   NOT NULL,
    ip_ix          bigint   NOT NULL,
    originator_ix  bigint,
    recipient_ix   bigint   NOT NULL,
    sealed         bytea    NOT NULL,
    PRIMARY KEY (part, node, id)
) PARTITION BY RANGE (part);
CREATE INDEX record_recipient ON relaylog.record (bucket, recipient_ix);
CREATE INDEX record_account ON relaylog.record (bucket, account_ix);
CREATE INDEX record_ip ON relaylog.record (bucket, ip_ix);
CREATE INDEX record_originator ON relaylog.record (bucket, originator_ix) WHERE originator_ix IS NOT NULL;
CREATE TABLE relaylog.outcome (
    part              integer  NOT NULL,
    node              smallint NOT NULL,
    id                bigint   NOT NULL,
    submission        bigint   NOT NULL,
    at_us             bigint   NOT NULL,
    outcome           smallint NOT NULL,
    upstream_status   integer,
    gateway_code      integer,
    message_id_sealed bytea,
    enhanced_status   text,
    size_bytes        bigint,
    ordinal           integer,
    receipt_state     text,
    receipt_error     text,
    receipt_done      text,
    PRIMARY KEY (part, node, id)
) PARTITION BY RANGE (part);
CREATE INDEX outcome_submission ON relaylog.outcome (node, submission);
CREATE TABLE relaylog.head (
    part            integer  NOT NULL,
    node            smallint NOT NULL,
    seq             bigint   NOT NULL,
    size            bigint   NOT NULL,
    record_through  bigint   NOT NULL,
    outcome_through bigint   NOT NULL,
    root            bytea    NOT NULL,
    frontier        bytea    NOT NULL,
    at_us           bigint   NOT NULL,
    signature       bytea    NOT NULL,
    PRIMARY KEY (part, node, seq)
);
CREATE TABLE relaylog.erasure (
    part      integer  NOT NULL,
    node      smallint NOT NULL,
    id        bigint   NOT NULL,
    at_us     bigint   NOT NULL,
    reason    text     NOT NULL,
    entries   bytea    NOT NULL,
    signature bytea    NOT NULL,
    PRIMARY KEY (part, node, id)
);
";

/// The ledger (see [`crate::ledger`]): the SQLite ledger's tables, every integer a
/// `bigint` (the ledger binds 64-bit integers), ids made by identity columns; and the
/// officers' API sessions (see [`crate::admin::session`]), by their tokens' SHA-256.
const V2_LEDGER: &str = "
CREATE TABLE relaylog.hold (
    id        bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    case_ref  text   NOT NULL,
    since_us  bigint NOT NULL,
    until_us  bigint NOT NULL,
    reason    text   NOT NULL,
    placed_at bigint NOT NULL,
    placed_by text   NOT NULL
);
CREATE TABLE relaylog.officer (
    name           text   PRIMARY KEY,
    role           text   NOT NULL CHECK (role IN ('officer', 'approver', 'admin')),
    password       text   NOT NULL,
    totp           bytea  NOT NULL,
    totp_last_step bigint NOT NULL DEFAULT -1,
    enabled        bigint NOT NULL DEFAULT 1,
    created_at     bigint NOT NULL,
    created_by     text   NOT NULL,
    failed_logins  bigint NOT NULL DEFAULT 0,
    locked_until   bigint NOT NULL DEFAULT 0
);
CREATE TABLE relaylog.cases (
    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    country         text   NOT NULL,
    organisation    text   NOT NULL,
    request_number  text   NOT NULL,
    authority       text   NOT NULL,
    legal_basis     text   NOT NULL,
    order_reference text   NOT NULL,
    order_date      text   NOT NULL,
    deadline        text   NOT NULL,
    confidential    bigint NOT NULL,
    since_us        bigint NOT NULL,
    until_us        bigint NOT NULL,
    criteria        bytea  NOT NULL,
    criteria_tags   text   NOT NULL,
    state           text   NOT NULL,
    opened_by       text   NOT NULL,
    opened_at       bigint NOT NULL,
    decided_by      text,
    decided_at      bigint,
    decision_note   text,
    closed_at       bigint,
    UNIQUE (country, organisation, request_number)
);
CREATE TABLE relaylog.audit (
    seq     bigint PRIMARY KEY,
    at_us   bigint NOT NULL,
    actor   text   NOT NULL,
    action  text   NOT NULL,
    details text   NOT NULL,
    hash    bytea  NOT NULL
);
CREATE INDEX audit_action ON relaylog.audit (action, seq);
CREATE TABLE relaylog.refusal (
    kind     text   NOT NULL,
    peer     text   NOT NULL,
    minute   bigint NOT NULL,
    count    bigint NOT NULL,
    written  bigint NOT NULL,
    first_at bigint NOT NULL,
    last_at  bigint NOT NULL,
    summary  text   NOT NULL,
    PRIMARY KEY (kind, peer, minute)
);
CREATE INDEX refusal_minute ON relaylog.refusal (minute);
CREATE TABLE relaylog.session (
    token_hash bytea  PRIMARY KEY,
    officer    text   NOT NULL,
    role       text   NOT NULL,
    created_at bigint NOT NULL,
    created_by text   NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX session_officer ON relaylog.session (officer);
";

/// Erasure across nodes: an officer on any node erases any node's rows (offboarding),
/// so a statement names the node whose key signed it, beside the node whose tree it
/// is (statements written before were signed by their tree's node). A signer that is
/// not a registered, authenticated node verifies nothing: no foreign key, so that a
/// damaged row is reported by `verify` rather than stopping an upgrade. And each node's
/// row gets a MAC of its id, name and key under the master key (`key_tag`, see
/// [`crate::store::keys::NodeTagger`]), which `init` on the node writes.
const V3_ERASURE_SIGNER: &str = "
ALTER TABLE relaylog.erasure ADD COLUMN signer smallint;
UPDATE relaylog.erasure SET signer = node;
ALTER TABLE relaylog.erasure ALTER COLUMN signer SET NOT NULL;
ALTER TABLE relaylog.node ADD COLUMN key_tag bytea;
";

/// Where a database stands against this relaylog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub from: i32,
    pub to: i32,
}

/// A node that answers from its journal (`store.acknowledge = "journal"`) records, in
/// the transaction that writes a journal frame's rows into a partition, the last frame
/// of its journal that the partition holds: a frame read back after a crash is
/// written into a partition once whatever the crash (as a SQLite partition's `meta`
/// row does). Rows go with their partition. `tag`: a MAC of the row under a key
/// derived from the master key ([`crate::store::keys::NodeTagger::frame_tag`]), so
/// that a row raised in the database alone is not believed.
const V4_JOURNAL: &str = "
CREATE TABLE relaylog.journal_frame (
    part    integer  NOT NULL,
    node    smallint NOT NULL,
    journal text     NOT NULL,
    frame   bigint   NOT NULL,
    tag     bytea    NOT NULL,
    PRIMARY KEY (part, node)
);
";

/// Outcome events in blocks (as a SQLite partition keeps them, see
/// [`crate::store::events`]): the events of one commit whose submissions lie within
/// `SPAN` of the newest one's go into one row, a column's values in one array, their
/// ids `first` … `last` in array order. One heap tuple and two index entries per
/// commit instead of per event: about a fifth of the server's work per message. The
/// rest (a receipt long after its submission) stay rows of `outcome`.
///
/// Found by submission through `(node, sub_min, sub_max)`; read in id order through
/// the primary key on `last`. `outcome_block_damaged` raises the error a reader gets
/// from a block whose arrays disagree with its columns (see
/// `crate::store::pgevents::select`): never skipped, `verify` reports it.
/// `outcome_event` shows every event, however stored, to people who read the
/// database by hand.
const V5_OUTCOME_BLOCK: &str = "
CREATE TABLE relaylog.outcome_block (
    part              integer    NOT NULL,
    node              smallint   NOT NULL,
    first             bigint     NOT NULL,
    last              bigint     NOT NULL,
    sub_min           bigint     NOT NULL,
    sub_max           bigint     NOT NULL,
    submission        bigint[]   NOT NULL,
    at_us             bigint[]   NOT NULL,
    outcome           smallint[] NOT NULL,
    upstream_status   integer[]  NOT NULL,
    gateway_code      integer[]  NOT NULL,
    message_id_sealed bytea[]    NOT NULL,
    enhanced_status   text[]     NOT NULL,
    size_bytes        bigint[]   NOT NULL,
    ordinal           integer[]  NOT NULL,
    receipt_state     text[]     NOT NULL,
    receipt_error     text[]     NOT NULL,
    receipt_done      text[]     NOT NULL,
    PRIMARY KEY (part, node, last)
) PARTITION BY RANGE (part);
CREATE INDEX outcome_block_submission ON relaylog.outcome_block (node, sub_min, sub_max);
DO $$
DECLARE p record;
BEGIN
    FOR p IN SELECT name, part, end_part FROM relaylog.partition LOOP
        CONTINUE WHEN to_regclass('relaylog.outcome_' || replace(p.name, '-', '_')) IS NULL;
        EXECUTE format(
            'CREATE TABLE relaylog.%I PARTITION OF relaylog.outcome_block FOR VALUES FROM (%s) TO (%s)',
            'outcome_block_' || replace(p.name, '-', '_'), p.part, p.end_part);
    END LOOP;
END $$;
CREATE FUNCTION relaylog.outcome_block_damaged(part integer, node smallint, first bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'outcome block % (node %, part %): its events disagree with its columns',
        first, node, part;
END $$;
CREATE VIEW relaylog.outcome_event AS
    SELECT part, node, id, submission, at_us, outcome, upstream_status, gateway_code,
           message_id_sealed, enhanced_status, size_bytes, ordinal, receipt_state,
           receipt_error, receipt_done
    FROM relaylog.outcome
    UNION ALL
    SELECT b.part, b.node, b.first + e.n - 1, e.submission, e.at_us, e.outcome,
           e.upstream_status, e.gateway_code, e.message_id_sealed, e.enhanced_status,
           e.size_bytes, e.ordinal, e.receipt_state, e.receipt_error, e.receipt_done
    FROM relaylog.outcome_block b,
         unnest(b.submission, b.at_us, b.outcome, b.upstream_status, b.gateway_code,
                b.message_id_sealed, b.enhanced_status, b.size_bytes, b.ordinal,
                b.receipt_state, b.receipt_error, b.receipt_done)
             WITH ORDINALITY AS e(submission, at_us, outcome, upstream_status, gateway_code,
                                  message_id_sealed, enhanced_status, size_bytes, ordinal,
                                  receipt_state, receipt_error, receipt_done, n);
";

/// The blind indexes of accounts, client IPs and originators as posting lists, as the
/// SQLite store keeps them: per commit, one row for each (time bucket, kind, tag) its
/// records share, holding their ids (`ids`, ascending), instead of one B-tree entry a
/// record and kind. A customer sends from a few accounts, addresses and sender names,
/// so a commit of thousands of records costs a few rows where it cost three entries a
/// record. Recipients, nearly one a message, keep their B-tree on `record`: a posting
/// a record would cost a row as well as its entry. Measured with
/// `benches/postgres.sh` (2026-12-06): the four B-trees were 6 of the server's
/// 10.5 µs a message; postings of all four kinds saved nothing (a posting row a
/// message, for the recipients); three kinds in postings, recipients in their B-tree,
/// and the ids stored uncompressed (`EXTERNAL`: compressing them was 2 µs a message),
/// 7–8 µs. `kind` is `IndexKind`'s number (1 account, 2 client IP, 3 originator). A
/// lookup seeks `(bucket, kind, tag)` and joins each id to its record by the primary
/// key; a closed partition gets its read-optimised index by `(kind, tag)` alone
/// ([`index_closed`]).
///
/// The existing records' postings are made here, one list per (node, kind, bucket,
/// tag), and the record table's three B-trees of those kinds dropped (the closed
/// partitions' by-tag ones too: the compaction thread builds the postings' again).
const V6_POSTING: &str = "
LOCK TABLE relaylog.record IN SHARE MODE;
CREATE TABLE relaylog.posting (
    part   integer  NOT NULL,
    node   smallint NOT NULL,
    kind   smallint NOT NULL,
    bucket bigint   NOT NULL,
    tag    bigint   NOT NULL,
    ids    bigint[] NOT NULL
) PARTITION BY RANGE (part);
ALTER TABLE relaylog.posting ALTER COLUMN ids SET STORAGE EXTERNAL;
CREATE INDEX posting_bucket_tag ON relaylog.posting (bucket, kind, tag);
DO $$
DECLARE p record; s text; c text;
BEGIN
    FOR p IN SELECT name, part, end_part FROM relaylog.partition LOOP
        s := replace(p.name, '-', '_');
        -- An expiry cut short after dropping the day's tables: it finishes the rest.
        CONTINUE WHEN to_regclass('relaylog.record_' || s) IS NULL;
        EXECUTE format(
            'CREATE TABLE relaylog.%I PARTITION OF relaylog.posting FOR VALUES FROM (%s) TO (%s)',
            'posting_' || s, p.part, p.end_part);
        EXECUTE format('ALTER TABLE relaylog.%I ALTER COLUMN ids SET STORAGE EXTERNAL', 'posting_' || s);
        EXECUTE format(
            'INSERT INTO relaylog.%I (part, node, kind, bucket, tag, ids) '
            'SELECT r.part, r.node, x.kind, r.bucket, x.tag, array_agg(r.id ORDER BY r.id) '
            'FROM relaylog.%I r CROSS JOIN LATERAL (VALUES (1::smallint, r.account_ix), '
            '(2::smallint, r.ip_ix), (3::smallint, r.originator_ix)) '
            'AS x(kind, tag) WHERE x.tag IS NOT NULL GROUP BY r.part, r.node, x.kind, r.bucket, x.tag',
            'posting_' || s, 'record_' || s);
        FOREACH c IN ARRAY ARRAY['account_ix', 'ip_ix', 'originator_ix'] LOOP
            EXECUTE format('DROP INDEX IF EXISTS relaylog.%I', 'record_' || s || '_' || c || '_tag');
        END LOOP;
    END LOOP;
END $$;
DROP INDEX relaylog.record_account, relaylog.record_ip, relaylog.record_originator;
UPDATE relaylog.partition SET indexed_us = NULL;
";

/// Traffic at a glance: the ledger's hourly counts (see `crate::ledger`'s DDL); and
/// the audit log indexed by case, for a case's history.
const V7_TRAFFIC: &str = "
ALTER TABLE relaylog.audit ADD COLUMN case_id bigint;
UPDATE relaylog.audit SET case_id = (details::jsonb ->> 'case')::bigint
 WHERE jsonb_typeof(details::jsonb -> 'case') = 'number'
   AND (details::jsonb ->> 'case') ~ '^-?[0-9]{1,18}$';
CREATE INDEX audit_case ON relaylog.audit (case_id, seq) WHERE action <> 'case.show';
CREATE TABLE relaylog.traffic (
    hour     bigint NOT NULL,
    family   text NOT NULL,
    listener text NOT NULL,
    label    text NOT NULL,
    count    bigint NOT NULL,
    PRIMARY KEY (hour, family, listener, label)
);
";

/// Deletion certificates (see [`crate::store::deletion`]); the backups table the
/// ledger's code reads on either backend (relaylog makes backups of SQLite stores
/// only: it stays empty here); data subjects' requests (see
/// [`crate::compliance::requests`]).
const V8_DELETION: &str = "
CREATE TABLE relaylog.deletion (
    partition   text   PRIMARY KEY,
    certificate text   NOT NULL,
    signature   bytea  NOT NULL,
    at_us       bigint NOT NULL
);
CREATE TABLE relaylog.backup (
    id          text   PRIMARY KEY,
    created_at  bigint NOT NULL,
    created_by  text   NOT NULL,
    shred_at    bigint NOT NULL,
    wrapped_key bytea  NOT NULL,
    shredded_at bigint,
    partitions  bigint NOT NULL,
    oldest      text,
    newest      text,
    bytes       bigint NOT NULL,
    sha256      text NOT NULL
);
CREATE TABLE relaylog.subject_request (
    id               bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    kind             text   NOT NULL,
    tag              text   NOT NULL,
    subject          bytea  NOT NULL,
    received         text   NOT NULL,
    deadline         text   NOT NULL,
    extension_reason text,
    opened_by        text   NOT NULL,
    opened_at        bigint NOT NULL,
    answered_at      bigint,
    answered_by      text
);
";

/// The version the database is at (0: never initialised).
pub fn version(client: &mut impl GenericClient) -> Result<i32, PgError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('relaylog.migration') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = client
        .query_one("SELECT max(version) FROM relaylog.migration", &[])?
        .get(0);
    Ok(v.unwrap_or(0))
}

/// Brings the database to [`VERSION`], each missing migration in order, all in one
/// transaction under [`lock::MIGRATE`].
pub fn migrate(client: &mut postgres::Client, now_us: i64) -> Result<Applied, PgError> {
    migrate_to(client, now_us, VERSION)
}

/// [`migrate`] to version `to` (at most [`VERSION`]): for tests of an upgrade, which
/// make a database as an older relaylog left it.
pub fn migrate_to(client: &mut postgres::Client, now_us: i64, to: i32) -> Result<Applied, PgError> {
    let to = to.min(VERSION);
    let mut tx = client.transaction()?;
    // A migration may wait for a lock, or build indexes on large tables: no limit. And
    // no NOTICE for each `IF NOT EXISTS` on a run again.
    tx.batch_execute(
        "SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0; \
         SET LOCAL client_min_messages = warning",
    )?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock::MIGRATE])?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS relaylog;
         CREATE TABLE IF NOT EXISTS relaylog.migration (
             version    integer PRIMARY KEY,
             applied_us bigint NOT NULL
         );",
    )?;
    let from = version(&mut tx)?;
    if from > VERSION {
        return Err(PgError::SchemaAhead {
            found: from,
            known: VERSION,
        });
    }
    if from > 0 && from < to {
        // Nodes writing meanwhile would write rows the migration does not see (and,
        // on their older relaylog, rows without what it adds): stopped first. A node
        // not running cannot start until the migration is done (its lock is held by
        // this transaction).
        let running: Vec<String> = tx
            .query(
                "SELECT name FROM relaylog.node WHERE NOT pg_try_advisory_xact_lock($1::bigint + id) ORDER BY name",
                &[&lock::NODE_BASE],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !running.is_empty() {
            return Err(PgError::Other(format!(
                "the schema is at version {from} and this relaylog brings it to {to}, but node(s) {} are \
                 running: stop every node's `serve`, then run `relaylog init` again",
                running.join(", ")
            )));
        }
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(to.max(0) as usize)
        .skip(from as usize)
    {
        let v = i as i32 + 1;
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO relaylog.migration (version, applied_us) VALUES ($1, $2)",
            &[&v, &now_us],
        )?;
    }
    tx.commit()?;
    Ok(Applied {
        from,
        to: to.max(from),
    })
}

/// Fails unless the database is at [`VERSION`].
pub fn check(client: &mut impl GenericClient) -> Result<(), PgError> {
    match version(client)? {
        v if v == VERSION => Ok(()),
        v if v > VERSION => Err(PgError::SchemaAhead {
            found: v,
            known: VERSION,
        }),
        v => Err(PgError::Schema {
            found: v,
            wanted: VERSION,
        }),
    }
}

/// Records the master key's check value (see [`crate::store::pgstore::master_check`]) on
/// the first node's `init`, or compares it on the others': every node must hold the
/// same master key, or one node's new partition keys would be unreadable to the rest.
pub fn claim_installation(
    client: &mut impl GenericClient,
    master_check: &str,
    settings: &str,
    now_us: i64,
) -> Result<(), PgError> {
    client.execute(
        "INSERT INTO relaylog.installation (one, master_check, settings, created_us) VALUES (1, $1, $2, $3) \
         ON CONFLICT (one) DO NOTHING",
        &[&master_check, &settings, &now_us],
    )?;
    check_installation(client, master_check, settings)
}

/// Fails unless `master_check` is the installation's and `settings` (partition
/// granularity, retention, blind-index shape: see `pgstore::shared_settings`) are the
/// ones the first node recorded: a node that made month partitions among days, or
/// expired at a shorter retention, would break or delete the others' records.
pub fn check_installation(
    client: &mut impl GenericClient,
    master_check: &str,
    settings: &str,
) -> Result<(), PgError> {
    let stored: Option<(String, String)> = client
        .query_opt(
            "SELECT master_check, settings FROM relaylog.installation",
            &[],
        )?
        .map(|r| (r.get(0), r.get(1)));
    match stored {
        Some((m, _)) if m != master_check => Err(PgError::Other(
            "this node's master key is not the one the database's other nodes use: copy the first node's master key here (store.master-key)".into(),
        )),
        Some((_, s)) if s != settings => Err(PgError::Other(format!(
            "this node's store settings ({settings}) are not the other nodes' ({s}): store.partition, store.retention, store.index-bytes and store.index-bucket must be the same on every node"
        ))),
        Some(_) => Ok(()),
        None => Err(PgError::Schema {
            found: 0,
            wanted: VERSION,
        }),
    }
}

/// Whether a benchmark filled this database (its records are made up).
pub fn is_bench(client: &mut impl GenericClient) -> Result<bool, PgError> {
    // Not initialised: not a benchmark's (and `target` says to run `init`).
    if version(client)? == 0 {
        return Ok(false);
    }
    Ok(client
        .query_opt("SELECT bench FROM relaylog.installation", &[])?
        .is_some_and(|r| r.get(0)))
}

/// Marks the database as a benchmark's if it holds no partition yet; whether it is
/// one (a database with real records is never written to by a benchmark).
pub fn claim_for_bench(client: &mut impl GenericClient) -> Result<bool, PgError> {
    let updated = client.execute(
        "UPDATE relaylog.installation SET bench = true \
         WHERE NOT bench AND NOT EXISTS (SELECT 1 FROM relaylog.partition)",
        &[],
    )?;
    if updated > 0 {
        return Ok(true);
    }
    Ok(client
        .query_opt("SELECT bench FROM relaylog.installation", &[])?
        .is_some_and(|r| r.get(0)))
}

/// Registers node `name` with its public signing key and the MAC of its row under the
/// master key (`key_tag`, see [`crate::store::keys::NodeTagger`]), or finds it
/// registered with that key (and writes its tag if it has none: a row registered
/// before tags, upgraded; a wrong one is refused, since the row changed in the
/// database): its id, and whether an existing row's tag was written. Another
/// key under the name is refused. Only `init` gets here: a holder of the master key
/// and the node's signing key, and an operator's act.
pub fn register_node(
    client: &mut postgres::Client,
    name: &str,
    public_key: &[u8],
    tagger: &crate::store::keys::NodeTagger,
    now_us: i64,
) -> Result<(i16, bool), PgError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock::MIGRATE])?;
    let (id, existed) = match node_id(&mut tx, name, public_key)? {
        Some(id) => (id, true),
        None => (
            tx.query_one(
                "INSERT INTO relaylog.node (id, name, public_key, registered_us) \
                 SELECT coalesce(max(id), 0) + 1, $1, $2, $3 FROM relaylog.node RETURNING id",
                &[&name, &public_key, &now_us],
            )?
            .get(0),
            false,
        ),
    };
    let tag = tagger.tag(id, name, public_key);
    if existed {
        let old: Option<Vec<u8>> = tx
            .query_one("SELECT key_tag FROM relaylog.node WHERE id = $1", &[&id])?
            .get(0);
        if old.is_some_and(|t| !tagger.verify(id, name, public_key, &t)) {
            return Err(PgError::Other(format!(
                "node `{name}`'s row carries a tag that is not its own (its id, name or key changed in the database, or the tag was copied there): check the database (`relaylog verify`); to accept the row as it is now, clear its tag (UPDATE relaylog.node SET key_tag = NULL WHERE name = '{name}') and run `relaylog init` again"
            )));
        }
    }
    let tagged = tx.execute(
        "UPDATE relaylog.node SET key_tag = $2 WHERE id = $1 AND key_tag IS DISTINCT FROM $2",
        &[&id, &tag],
    )? > 0;
    tx.commit()?;
    Ok((id, existed && tagged))
}

/// The id of node `name`, if it is registered; an error if with another key.
pub fn node_id(
    client: &mut impl GenericClient,
    name: &str,
    public_key: &[u8],
) -> Result<Option<i16>, PgError> {
    let row = client.query_opt(
        "SELECT id, public_key FROM relaylog.node WHERE name = $1",
        &[&name],
    )?;
    match row {
        None => Ok(None),
        Some(r) => {
            let key: Vec<u8> = r.get(1);
            if key != public_key {
                return Err(PgError::NodeKey(name.to_owned()));
            }
            Ok(Some(r.get(0)))
        }
    }
}

/// A registered node, as its row says (which only [`Node::authentic`] vouches for).
#[derive(Debug, Clone)]
pub struct Node {
    pub id: i16,
    pub name: String,
    pub public_key: Vec<u8>,
    /// The MAC of its id, name and key under the master key (`None`: registered before
    /// tags, until `init` runs on it again).
    pub key_tag: Option<Vec<u8>>,
}

impl Node {
    /// Whether its row is one a holder of the master key wrote.
    pub fn authentic(&self, tagger: &crate::store::keys::NodeTagger) -> bool {
        self.key_tag
            .as_deref()
            .is_some_and(|t| tagger.verify(self.id, &self.name, &self.public_key, t))
    }
}

/// Every registered node, by id.
pub fn nodes(client: &mut impl GenericClient) -> Result<Vec<Node>, PgError> {
    Ok(client
        .query(
            "SELECT id, name, public_key, key_tag FROM relaylog.node ORDER BY id",
            &[],
        )?
        .into_iter()
        .map(|r| Node {
            id: r.get(0),
            name: r.get(1),
            public_key: r.get(2),
            key_tag: r.get(3),
        })
        .collect())
}

/// The `part` value of a partition: its first day, in days since 1970-01-01.
pub fn part(p: PartitionId) -> i32 {
    (p.start_micros() / 86_400_000_000) as i32
}

/// The partition whose first day is `part`, in the given granularity.
pub fn partition_of_part(granularity: crate::config::Granularity, part: i32) -> PartitionId {
    PartitionId::containing(granularity, i64::from(part) * 86_400_000_000)
}

/// The suffix of a partition's tables: `2026_12_05` or `2026_12`.
pub fn table_suffix(p: PartitionId) -> String {
    p.to_string().replace('-', "_")
}

/// Creates `p`'s tables if they are not there yet (under [`lock::PARTITIONS`], so
/// nodes doing it at once, or expiry dropping one, do not collide). Its name and
/// bounds are formatted from a `PartitionId`, never from input.
pub fn ensure_partition(
    client: &mut postgres::Client,
    p: PartitionId,
    now_us: i64,
) -> Result<bool, PgError> {
    let name = p.to_string();
    let exists = client
        .query_opt("SELECT 1 FROM relaylog.partition WHERE name = $1", &[&name])?
        .is_some();
    if exists {
        return Ok(false);
    }
    let (from, to) = (part(p), part(p.next()));
    let suffix = table_suffix(p);
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock::PARTITIONS])?;
    let created = tx.execute(
        "INSERT INTO relaylog.partition (name, part, end_part, created_us) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO NOTHING",
        &[&name, &from, &to, &now_us],
    )?;
    if created == 1 {
        tx.batch_execute(&format!(
            "CREATE TABLE relaylog.record_{suffix} PARTITION OF relaylog.record FOR VALUES FROM ({from}) TO ({to});
             CREATE TABLE relaylog.outcome_{suffix} PARTITION OF relaylog.outcome FOR VALUES FROM ({from}) TO ({to});
             CREATE TABLE relaylog.outcome_block_{suffix} PARTITION OF relaylog.outcome_block FOR VALUES FROM ({from}) TO ({to});
             CREATE TABLE relaylog.posting_{suffix} PARTITION OF relaylog.posting FOR VALUES FROM ({from}) TO ({to});
             ALTER TABLE relaylog.posting_{suffix} ALTER COLUMN ids SET STORAGE EXTERNAL;"
        ))?;
    }
    tx.commit()?;
    Ok(created == 1)
}

/// The partitions that have tables, oldest first, each with whether its
/// read-optimised indexes are built (see [`index_closed`]).
pub fn partitions_indexed(
    client: &mut impl GenericClient,
    granularity: crate::config::Granularity,
) -> Result<Vec<(PartitionId, bool)>, PgError> {
    Ok(client
        .query(
            "SELECT part, indexed_us IS NOT NULL FROM relaylog.partition ORDER BY part",
            &[],
        )?
        .into_iter()
        .map(|r| (partition_of_part(granularity, r.get(0)), r.get(1)))
        .collect())
}

/// The read-optimised indexes of a closed partition: its records by recipient tag
/// alone, its postings by kind and tag alone, so that a lookup seeks once per
/// partition instead of once per time bucket.
/// Built `CONCURRENTLY` (late rows still go in meanwhile) by whichever node gets the
/// partition's advisory lock; `false` when another node holds it. Safe to run again.
pub fn index_closed(
    client: &mut super::Pooled,
    p: PartitionId,
    now_us: i64,
) -> Result<bool, PgError> {
    let key = lock::INDEX_BASE + i64::from(part(p));
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
        .get(0);
    if !got {
        return Ok(false);
    }
    let result = (|| {
        let suffix = table_suffix(p);
        for (name, table, columns) in [
            (
                format!("record_{suffix}_recipient_ix_tag"),
                "record",
                "recipient_ix",
            ),
            (format!("posting_{suffix}_tag"), "posting", "kind, tag"),
        ] {
            // A build interrupted before leaves an invalid index of that name: gone
            // first, or IF NOT EXISTS would keep it.
            let invalid: bool = client
                .query_opt(
                    "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = 'relaylog' AND c.relname = $1",
                    &[&name],
                )?
                .is_some_and(|r| r.get(0));
            super::unbounded(client, |c| {
                if invalid {
                    c.batch_execute(&format!("DROP INDEX CONCURRENTLY relaylog.{name}"))?;
                }
                c.batch_execute(&format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON relaylog.{table}_{suffix} ({columns})"
                ))
            })?;
        }
        client.execute(
            "UPDATE relaylog.partition SET indexed_us = $2 WHERE name = $1",
            &[&p.to_string(), &now_us],
        )?;
        Ok(())
    })();
    if client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .is_err()
    {
        // Its session would keep the partition from every node's indexing.
        client.discard();
    }
    result.map(|()| true)
}

/// The partitions that have tables, oldest first.
pub fn partitions(
    client: &mut impl GenericClient,
    granularity: crate::config::Granularity,
) -> Result<Vec<PartitionId>, PgError> {
    Ok(client
        .query("SELECT part FROM relaylog.partition ORDER BY part", &[])?
        .into_iter()
        .map(|r| partition_of_part(granularity, r.get(0)))
        .collect())
}
