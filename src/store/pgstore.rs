//! The store on PostgreSQL (`store.backend = "postgres"`, see [`crate::pg`]): the
//! writer's side ([`PgSink`]; the rows' encodings in [`super::pgrows`]), and the
//! readers' besides lookups ([`super::pglookup`]): verify, erasure, expiry, heads.
//!
//! Each node writes its own rows: a record's key is `(part, node, id)`, ids given by
//! that node's writer in order, and each node keeps its own Merkle tree per partition,
//! its heads signed with its own key over the partition's name and the node's (see
//! [`super::integrity::Head::message_of`]). The writer commits each partition's share
//! of a batch with the head when one is due: the relay's small batches as one
//! statement, larger ones by COPY in one transaction, or two over two connections for
//! the largest (see [`PgSink::write`]). By default it answers the clients waiting on
//! it only after the commit: no journal, so that a node that never comes back has
//! lost nothing a client was answered for. With `store.acknowledge = "journal"` the
//! node's journal is in front, as on SQLite: clients are answered from it, and each
//! partition records the last journal frame it holds in the transaction that writes
//! the frame's rows ([`PgSink::journal_through`]), so a frame read back after a crash
//! goes in once.

use std::collections::HashMap;
use std::sync::Arc;

use super::integrity::{self, LastHead, TreeState};
use super::partition::PartitionId;
use super::pgevents;
use super::pgrows;
use super::rows::{OutcomeRow, Row};
use super::writer::WriteError;
use crate::config::{Granularity, Retention};
use crate::pg::{PgError, Pool, schema};

/// The value that tells whether two nodes hold the same master key: a MAC of a fixed
/// string under it, which says nothing about the key.
pub fn master_check(master: &super::keys::MasterKey) -> String {
    master.audit_tag("installation", "relaylog master key check v1")
}

/// The store settings every node must share, as `relaylog.installation` keeps them.
pub fn shared_settings(cfg: &crate::config::StoreConfig) -> String {
    let retention = cfg.retention;
    let partition = match cfg.partition {
        Granularity::Day => "day",
        Granularity::Month => "month",
    };
    format!(
        "partition {partition}, retention {retention}, index {} bytes, bucket {} s",
        cfg.index_bytes,
        cfg.index_bucket_us / 1_000_000
    )
}

/// This node in the PostgreSQL store, checked: the database at this relaylog's schema
/// version, the installation's master key, and the node registered there with this
/// installation's signing key. What `serve` and `check-config` start with.
pub fn target(
    cfg: &crate::config::StoreConfig,
    pg: &crate::config::PgConfig,
    signer: &ring::signature::Ed25519KeyPair,
) -> Result<PgTarget, super::OpenError> {
    let master = super::keys::MasterKey::load(&cfg.master_key)?;
    let pool = Pool::shared(pg)?;
    let node = {
        let mut client = pool.get()?;
        schema::check(&mut *client)?;
        schema::check_installation(&mut *client, &master_check(&master), &shared_settings(cfg))?;
        authenticated_node(&mut client, pg, signer, &master.node_tagger())?
    };
    Ok(PgTarget {
        pool,
        node,
        node_name: pg.node.clone(),
        granularity: cfg.partition,
        retention: cfg.retention,
        tagger: master.node_tagger(),
    })
}

/// This node's id, its row as `relaylog init` wrote it: a row without its tag (the
/// database upgraded, `init` not run on this node since) or with a wrong one (changed
/// in the database: its id, name or key, or a tag copied from another row) is
/// refused, never tagged here. Only `init`, an operator's act, writes a tag.
fn authenticated_node(
    client: &mut postgres::Client,
    pg: &crate::config::PgConfig,
    signer: &ring::signature::Ed25519KeyPair,
    tagger: &super::keys::NodeTagger,
) -> Result<i16, PgError> {
    use ring::signature::KeyPair;
    let public_key = signer.public_key().as_ref();
    let id = schema::node_id(&mut *client, &pg.node, public_key)?
        .ok_or_else(|| PgError::UnknownNode(pg.node.clone()))?;
    let own = schema::nodes(&mut *client)?
        .into_iter()
        .find(|n| n.id == id);
    match own {
        Some(n) if n.authentic(tagger) => Ok(id),
        Some(n) if n.key_tag.is_none() => Err(PgError::Other(format!(
            "node `{}`'s row has no tag yet (the database was upgraded): run `relaylog init` on this node",
            pg.node
        ))),
        _ => Err(PgError::Other(format!(
            "node `{}`'s row in the database is not the one `relaylog init` wrote (its id, name, key or tag changed there): check the database (`relaylog verify`), then run `relaylog init` on this node",
            pg.node
        ))),
    }
}

/// What `relaylog init` did to the database.
#[derive(Debug)]
pub struct Initialised {
    pub applied: schema::Applied,
    pub node: i16,
    /// Whether this node's existing row got its tag written (upgraded, or changed in
    /// the database since: the operator is told).
    pub tagged: bool,
}

/// `relaylog init` on PostgreSQL, once the node's keys are in place: brings the schema
/// to this version, records (or checks) the master key's check value, and registers
/// this node with its public signing key. Runs again safely (an upgrade's migrations).
pub fn init(
    cfg: &crate::config::StoreConfig,
    pg: &crate::config::PgConfig,
    now_us: i64,
) -> Result<Initialised, super::OpenError> {
    use ring::signature::KeyPair;
    let master = super::keys::MasterKey::load(&cfg.master_key)?;
    let signer = integrity::load_signing_key(&cfg.signing_key)?;
    let pool = Arc::new(Pool::new(pg)?);
    let mut client = pool.get()?;
    let applied = schema::migrate(&mut client, now_us)?;
    schema::claim_installation(
        &mut *client,
        &master_check(&master),
        &shared_settings(cfg),
        now_us,
    )?;
    let public_key = signer.public_key().as_ref();
    let (node, tagged) = schema::register_node(
        &mut client,
        &pg.node,
        public_key,
        &master.node_tagger(),
        now_us,
    )?;
    Ok(Initialised {
        applied,
        node,
        tagged,
    })
}

/// Which database, and this node in it.
#[derive(Clone)]
pub struct PgTarget {
    pub pool: Arc<Pool>,
    /// This node's id in `relaylog.node` (see [`schema::register_node`]).
    pub node: i16,
    pub node_name: String,
    pub granularity: Granularity,
    pub retention: Retention,
    /// Tells the nodes' rows this installation wrote from others (see
    /// [`super::keys::NodeTagger`]).
    pub tagger: super::keys::NodeTagger,
}

impl From<PgError> for WriteError {
    fn from(e: PgError) -> Self {
        WriteError::Database {
            reason: e.reason(),
            message: e.to_string(),
        }
    }
}

fn db(e: postgres::Error) -> WriteError {
    PgError::from(e).into()
}

/// The columns [`record_row`] reads, in its order.
pub const RECORD_COLUMNS: &str = "id, submission, ordinal, at_us, bucket, protocol, service, \
     recipient_form, segments, account_ix, ip_ix, originator_ix, recipient_ix, sealed";

/// The columns [`outcome_row`] reads, in its order.
pub const OUTCOME_COLUMNS: &str = "id, submission, at_us, outcome, upstream_status, gateway_code, \
     message_id_sealed, enhanced_status, size_bytes, ordinal, receipt_state, receipt_error, receipt_done";

/// A record as stored, its id first (its leaf not computed).
pub fn record_row(r: &postgres::Row) -> (i64, Row) {
    (
        r.get(0),
        Row {
            submission: r.get(1),
            ordinal: r.get::<_, i32>(2) as u32,
            at_us: r.get(3),
            bucket: r.get(4),
            protocol: r.get::<_, i16>(5) as u8,
            service: r.get::<_, i16>(6) as u8,
            recipient_form: r.get::<_, i16>(7) as u8,
            segments: r.get::<_, i32>(8) as u16,
            account_ix: r.get(9),
            ip_ix: r.get(10),
            originator_ix: r.get(11),
            recipient_ix: r.get(12),
            sealed: r.get(13),
            leaf: [0; 32],
        },
    )
}

/// An outcome event as stored, its id first (its leaf not computed).
pub fn outcome_row(r: &postgres::Row) -> (i64, OutcomeRow) {
    (
        r.get(0),
        OutcomeRow {
            submission: r.get(1),
            at_us: r.get(2),
            outcome: r.get::<_, i16>(3) as u8,
            upstream_status: r.get::<_, Option<i32>>(4).map(|v| v as u16),
            gateway_code: r.get(5),
            message_id_sealed: r.get(6),
            enhanced_status: r.get(7),
            size_bytes: r.get::<_, Option<i64>>(8).map(|v| v as u64),
            ordinal: r.get::<_, Option<i32>>(9).map(|v| v as u32),
            receipt_state: r.get(10),
            receipt_error: r.get(11),
            receipt_done: r.get(12),
            leaf: [0; 32],
        },
    )
}

/// A head row (seq, size, record_through, outcome_through, root, at_us, signature)
/// and its signature. A root of the wrong length reads as zeros, which the signature
/// over it then fails to verify: damage, reported as such (as on SQLite).
fn signed_head(r: &postgres::Row) -> (integrity::Head, Vec<u8>) {
    let root: Vec<u8> = r.get(4);
    let mut hash = [0u8; 32];
    if root.len() == 32 {
        hash.copy_from_slice(&root);
    }
    (
        integrity::Head {
            seq: r.get(0),
            size: r.get::<_, i64>(1) as u64,
            record_through: r.get(2),
            outcome_through: r.get(3),
            root: hash,
            at_us: r.get(5),
        },
        r.get(6),
    )
}

/// The last signed head of `node`'s tree of a partition.
pub fn last_head(
    client: &mut impl postgres::GenericClient,
    part: i32,
    node: i16,
) -> Result<Option<LastHead>, postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT seq, size, record_through, outcome_through, frontier FROM relaylog.head \
             WHERE part = $1 AND node = $2 ORDER BY seq DESC LIMIT 1",
            &[&part, &node],
        )?
        .map(|r| LastHead {
            seq: r.get(0),
            size: r.get(1),
            record_through: r.get(2),
            outcome_through: r.get(3),
            frontier: r.get(4),
        }))
}

/// One partition as the writer holds it open.
struct Open {
    tree: TreeState,
    last_used: u64,
    /// The last frame of the writer's journal the partition holds (0 without one).
    journal_through: u64,
}

/// Most partitions the writer keeps state for (as on SQLite).
const MAX_OPEN: usize = 4;

/// The writer's side: connections of its own (never the pool's, which requests
/// share), the partitions it writes, and their trees.
pub struct PgSink {
    target: PgTarget,
    client: Option<postgres::Client>,
    /// Each open partition's statements, prepared on `client` (see
    /// [`PgSink::statements`]); emptied whenever `client` is replaced or a write fails.
    statements: HashMap<PartitionId, Statements>,
    /// A second connection of its own, for the other half of a large batch.
    helper: Option<postgres::Client>,
    open: HashMap<PartitionId, Open>,
    /// Partitions closed with rows that may be waiting for their head (a failed write
    /// or signing, a lost connection): opened again from the database and signed by
    /// [`PgSink::seal_all`], with a growing pause after each failed try.
    reseal: Reseal,
    /// The server process of the writer's connection: a lock still held by it after
    /// the connection was lost is this writer's own, ending.
    backend_pid: Option<i32>,
    tick: u64,
    /// The id of the journal in front (`store.acknowledge = "journal"`), whose frames
    /// each partition records holding (see [`PgSink::journal_through`]).
    journal: Option<Arc<str>>,
    /// A batch's postings, made again in these buffers for each.
    postings: pgrows::Postings,
}

impl PgSink {
    pub fn new(target: PgTarget) -> Self {
        PgSink {
            journal: None,
            target,
            client: None,
            statements: HashMap::new(),
            helper: None,
            open: HashMap::new(),
            reseal: Reseal::default(),
            backend_pid: None,
            tick: 0,
            postings: pgrows::Postings::default(),
        }
    }

    /// The writer's connection, made again when it failed (its prepared statements
    /// with it).
    fn client(&mut self) -> Result<&mut postgres::Client, WriteError> {
        if self
            .client
            .as_ref()
            .is_some_and(postgres::Client::is_closed)
        {
            self.client = None;
        }
        if self.client.is_none() {
            self.connect_locked(std::time::Duration::ZERO)?;
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }

    /// A new connection for the writer, holding this node's lock (a session lock: it
    /// lives as long as the connection), tried again on that connection for up to
    /// `grace`, or [`PgError::NodeBusy`] naming the session that holds it. What the
    /// writer held of its open partitions is read again from the database (a process
    /// that had the lock meanwhile may have written to them); those with rows waiting
    /// for a head are opened and signed by the next [`PgSink::seal_all`].
    fn connect_locked(&mut self, grace: std::time::Duration) -> Result<(), PgError> {
        self.statements.clear();
        for (p, o) in self.open.drain() {
            if o.tree.unsigned() > 0 {
                self.reseal.add(p);
            }
        }
        let mut client = self.target.pool.connect()?;
        let key = schema::lock::NODE_BASE + i64::from(self.target.node);
        let deadline = std::time::Instant::now() + grace;
        loop {
            let mine: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
                .get(0);
            if mine {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(PgError::NodeBusy {
                    node: self.target.node_name.clone(),
                    holder: lock_holder(&mut client, key, self.backend_pid),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.backend_pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .ok()
            .map(|r| r.get(0));
        self.client = Some(client);
        Ok(())
    }

    /// Connects the writer's connection now, taking this node's lock, waiting up to
    /// `grace` for it: a writer that has just stopped (a restart, a store closed and
    /// opened again in one process) lets go of it when the server has seen its
    /// connection end.
    pub fn connect_owning(&mut self, grace: std::time::Duration) -> Result<(), PgError> {
        self.connect_locked(grace)
    }

    /// Puts the rows of journal `id`'s frames in front, before the first write: each
    /// partition records the last frame it holds, in the transaction that writes it.
    pub fn journaled(&mut self, id: &str) {
        debug_assert!(self.open.is_empty(), "set before any partition is opened");
        self.journal = Some(id.into());
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.target.node_name
    }

    /// The newest frame of the journal in front that any partition records holding
    /// for this node (0: none): the journal numbers its frames above it.
    pub fn journal_floor(&mut self) -> Result<u64, WriteError> {
        let Some(id) = self.journal.clone() else {
            return Ok(0);
        };
        let (node, tagger) = (self.target.node, self.target.tagger.clone());
        journal_frames(self.client()?, node, &id, &tagger)
    }

    /// The last frame of the journal in front that `partition` holds (0: none, or no
    /// journal), the partition opened for it; `None` when expiry removed it.
    pub fn journal_through(
        &mut self,
        partition: PartitionId,
        now: i64,
        signer: Option<&ring::signature::Ed25519KeyPair>,
    ) -> Result<Option<u64>, WriteError> {
        self.client()?;
        Ok(self
            .open(partition, now, signer)?
            .map(|o| o.journal_through))
    }

    /// `partition`'s statements, prepared on the writer's connection once: a
    /// statement given as text is prepared again at each use, a round trip more per
    /// batch.
    fn statements(&mut self, partition: PartitionId) -> Result<Statements, WriteError> {
        // A closed connection is replaced (and the statements with it) first.
        self.client()?;
        if let Some(c) = self.statements.get(&partition) {
            return Ok(c.clone());
        }
        let client = self.client.as_mut().expect("connected just above");
        let c = Statements {
            record_copy: client
                .prepare(&pgrows::copy_sql(
                    "record",
                    partition,
                    &pgrows::RECORD_FIELDS,
                ))
                .map_err(db)?,
            outcome_copy: client
                .prepare(&pgrows::copy_sql(
                    "outcome",
                    partition,
                    &pgrows::OUTCOME_FIELDS,
                ))
                .map_err(db)?,
            insert: client.prepare(&pgrows::insert_sql(partition)).map_err(db)?,
            block_insert: client
                .prepare(&pgevents::insert_sql(partition))
                .map_err(db)?,
            postings: client
                .prepare(&pgrows::postings_sql(partition))
                .map_err(db)?,
        };
        self.statements.insert(partition, c.clone());
        Ok(c)
    }

    /// Forgets `partition`'s state after a failed write (it is read again from the
    /// database, and its earlier rows, which may be waiting for their head, signed),
    /// the statements, and the connections that failed.
    pub fn forget(&mut self, partition: PartitionId) {
        self.open.remove(&partition);
        self.reseal.add(partition);
        self.statements.clear();
        for c in [&mut self.client, &mut self.helper] {
            if c.as_ref().is_some_and(postgres::Client::is_closed) {
                *c = None;
            }
        }
    }

    /// Leaves written and not yet under a signed head, in every open partition, and
    /// one more for each closed partition due to be opened again and signed (see
    /// [`Reseal`]): while any is above 0 the writer's ticks call
    /// [`PgSink::seal_all`].
    pub fn unsigned(&self) -> usize {
        self.open.values().map(|o| o.tree.unsigned()).sum::<usize>() + self.reseal.due()
    }

    /// The state of `partition`, its tables created if they are not there yet;
    /// `None` when expiry removed it (past retention, its keys gone): its late rows
    /// are dropped rather than written into tables made anew for them.
    fn open(
        &mut self,
        partition: PartitionId,
        now: i64,
        signer: Option<&ring::signature::Ed25519KeyPair>,
    ) -> Result<Option<&mut Open>, WriteError> {
        self.tick += 1;
        let tick = self.tick;
        if !self.open.contains_key(&partition) {
            let (node, retention) = (self.target.node, self.target.retention);
            let name = self.target.node_name.clone();
            let tagger = self.target.tagger.clone();
            let past = super::expiry::past_retention(
                retention,
                partition,
                crate::clock::micros_to_datetime(now),
            );
            if past {
                let keys = self
                    .client()?
                    .query_opt(
                        "SELECT 1 FROM relaylog_keys.partition_key WHERE partition = $1",
                        &[&partition.to_string()],
                    )
                    .map_err(db)?;
                if keys.is_none() {
                    return Ok(None);
                }
            }
            // Room made first, then the tree read: signing the closed one may have to
            // connect again, which reads every tree again (see `connect_locked`).
            if self.open.len() >= MAX_OPEN
                && let Some(oldest) = self
                    .open
                    .iter()
                    .min_by_key(|(_, o)| o.last_used)
                    .map(|(p, _)| *p)
            {
                // Its waiting leaves signed first: a day written to no more (late rows
                // of several days) would otherwise keep them unsigned. If that fails,
                // the next seal_all opens it again and signs them.
                let waiting = self.open[&oldest].tree.unsigned() > 0;
                if let Some(key) = signer
                    && waiting
                    && let Err(e) = self.seal(oldest, key, now)
                {
                    tracing::warn!(partition = %oldest, reason = e.reason(), error = %e, "the waiting rows of a partition to close could not be signed; tried again with the next seal");
                    self.reseal.add(oldest);
                }
                self.open.remove(&oldest);
                self.statements.remove(&oldest);
            }
            let journal = self.journal.clone();
            let client = self.client()?;
            schema::ensure_partition(client, partition, now)?;
            let tree = load_tree(client, partition, (node, &name), signer, &tagger)?;
            let journal_through = match journal.as_deref() {
                Some(id) => journal_frame(client, partition, node, id, &tagger)?,
                None => 0,
            };
            self.open.insert(
                partition,
                Open {
                    tree,
                    last_used: tick,
                    journal_through,
                },
            );
        }
        let open = self.open.get_mut(&partition).expect("inserted just above");
        open.last_used = tick;
        Ok(Some(open))
    }

    /// Writes a partition's share of a batch: its records and outcome events with the
    /// ids after the last ones, and a signed head when one is due. Fewer than
    /// [`ONE_STATEMENT_ROWS`] rows (the relay's batches) go in as one statement, one
    /// round trip ([`PgSink::write_small`]); more by COPY in one transaction, or two
    /// over two connections for [`PARALLEL_ROWS`] records or more
    /// ([`PgSink::write_copy`]). With a journal in front, the partition records in
    /// the same transaction that it holds the journal through `newest_frame` (when
    /// that is past what it held). Returns (records, outcomes) written; (0, 0) for a
    /// removed partition.
    pub fn write(
        &mut self,
        partition: PartitionId,
        records: &[&Row],
        outcomes: &[&OutcomeRow],
        newest_frame: u64,
        signer: Option<&ring::signature::Ed25519KeyPair>,
        now: i64,
    ) -> Result<(u64, u64), WriteError> {
        // Connected first: a reconnection reads the trees again (see connect_locked),
        // so the one taken out below is the database's.
        self.client()?;
        if self.open(partition, now, signer)?.is_none() {
            tracing::warn!(partition = %partition, rows = records.len() + outcomes.len(), "rows of a partition expiry removed dropped");
            return Ok((0, 0));
        }
        // Prepared (which may connect again) before the tree is taken out.
        let statements = match self.statements(partition) {
            Ok(s) => s,
            Err(e) => {
                self.forget(partition);
                return Err(e);
            }
        };
        // Taken out while the connection is borrowed; put back only after a commit.
        // Gone if preparing had to connect again (which forgets every tree): the
        // batch fails (its clients hear it), the next reads the tree again.
        let Some(mut open) = self.open.remove(&partition) else {
            self.forget(partition);
            return Err(WriteError::Database {
                reason: "database_unreachable",
                message: "the connection to the database was lost and made again while the batch was prepared".into(),
            });
        };
        let mut tree = open.tree.clone();
        let id = self.journal.clone();
        let part = schema::part(partition);
        let journal = id
            .as_deref()
            .filter(|_| newest_frame > open.journal_through)
            .map(|id| {
                let frame = newest_frame as i64;
                let tag = self
                    .target
                    .tagger
                    .frame_tag(part, self.target.node, id, frame);
                (id, frame, tag)
            });
        // The events in the order they get their ids: the blocks' first.
        let placed = pgevents::Placed::of(outcomes);
        let batch = Batch {
            partition,
            part,
            first_record: tree.last_record() + 1,
            first_outcome: tree.last_outcome() + 1,
            records,
            outcomes: &placed,
            journal,
        };
        for (k, r) in records.iter().enumerate() {
            tree.push_record(batch.first_record + k as i64, r.leaf);
        }
        for (k, o) in placed.events.iter().enumerate() {
            tree.push_outcome(batch.first_outcome + k as i64, o.leaf);
        }
        let head = signer
            .filter(|_| tree.due())
            .and_then(|key| tree.next_head(key, partition, Some(&self.target.node_name), now));
        let result = if records.len() + outcomes.len() < ONE_STATEMENT_ROWS {
            self.write_small(&statements.insert, &batch, head.as_ref())
        } else {
            self.write_copy(&statements, &batch, head.as_ref())
        };
        match result {
            Ok(()) => {
                if let Some(head) = head {
                    tree.signed(head);
                }
                open.tree = tree;
                if let Some((_, frame, _)) = journal {
                    open.journal_through = frame as u64;
                }
                self.open.insert(partition, open);
                Ok((records.len() as u64, outcomes.len() as u64))
            }
            Err(e) => {
                self.forget(partition);
                Err(e)
            }
        }
    }

    /// A small batch as one statement ([`pgrows::insert_sql`]): records, outcome
    /// events and `head` in one round trip and one implicit transaction.
    fn write_small(
        &mut self,
        insert: &postgres::Statement,
        batch: &Batch<'_>,
        head: Option<&integrity::NextHead>,
    ) -> Result<(), WriteError> {
        use postgres::types::ToSql;
        let node = self.target.node;
        let h = head.map(|n| &n.head);
        let frontier = head.map(|n| n.frontier.to_bytes());
        let head: [&(dyn ToSql + Sync); 8] = [
            &h.map(|h| h.seq),
            &h.map(|h| h.size as i64),
            &h.map(|h| h.record_through),
            &h.map(|h| h.outcome_through),
            &h.map(|h| h.root.as_slice()),
            &frontier,
            &h.map(|h| h.at_us),
            &head.map(|n| n.signature.as_slice()),
        ];
        let placed = batch.outcomes;
        // Under ONE_STATEMENT_ROWS events: one block at most (see BLOCK_EVENTS).
        debug_assert!(placed.blocked <= pgevents::BLOCK_EVENTS);
        let block = &placed.events[..placed.blocked];
        let (sub_min, sub_max) = pgevents::bounds(block);
        let first_row = batch.first_outcome + placed.blocked as i64;
        let records = pgrows::arrays(batch.records, &pgrows::RECORD_FIELDS);
        let rows = pgrows::arrays(placed.rows(), &pgrows::OUTCOME_FIELDS);
        let blocked = pgrows::arrays(block, &pgrows::OUTCOME_FIELDS);
        let (journal, frame) = (batch.journal.map(|j| j.0), batch.journal.map(|j| j.1));
        let tag = batch.journal.as_ref().map(|j| j.2.as_slice());
        let mut params: Vec<&(dyn ToSql + Sync)> =
            Vec::with_capacity(pgrows::NUMBERING.count as usize);
        params.extend([
            &batch.part as &(dyn ToSql + Sync),
            &node,
            &batch.first_record,
            &first_row,
            &batch.first_outcome,
        ]);
        self.postings.fill(batch.records, batch.first_record);
        params.extend(records.iter().map(|c| c as &(dyn ToSql + Sync)));
        params.extend(self.postings.params());
        params.extend(rows.iter().map(|c| c as &(dyn ToSql + Sync)));
        params.extend([&sub_min as &(dyn ToSql + Sync), &sub_max]);
        params.extend(blocked.iter().map(|c| c as &(dyn ToSql + Sync)));
        params.extend(head);
        params.extend([&journal as &(dyn ToSql + Sync), &frame, &tag]);
        let client = self.client.as_mut().expect("connected by statements");
        client.execute(insert, &params).map_err(db)?;
        Ok(())
    }

    /// A large batch by COPY in one transaction with `head`; its records over two
    /// connections at once from [`PARALLEL_ROWS`] on, each half in a transaction of
    /// its own: the server's work per row (its B-trees and postings) is most of a commit's cost,
    /// and one connection uses one core. The helper's half commits only once both
    /// halves are copied, just before the main one, which holds the head over both:
    /// only a failure of that last commit (a connection lost at that moment, as with
    /// one connection) can leave the helper's half in unsigned and unanswered for; the
    /// tree is then loaded again. Without a helper connection, or with a journal in
    /// front (whose frames must go in whole or not at all), the batch goes over one.
    fn write_copy(
        &mut self,
        statements: &Statements,
        batch: &Batch<'_>,
        head: Option<&integrity::NextHead>,
    ) -> Result<(), WriteError> {
        let (node, part, first) = (self.target.node, batch.part, batch.first_record);
        let records = batch.records;
        // Not with a journal in front: the helper's half would be in without the
        // frame recorded, should the main transaction then fail, and go in again.
        let split_up = records.len() >= PARALLEL_ROWS && self.journal.is_none();
        if split_up && self.helper.as_ref().is_none_or(postgres::Client::is_closed) {
            self.helper = match self.target.pool.connect() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(reason = e.reason(), error = %e, "no second connection for large batches; writing over one");
                    None
                }
            };
        }
        let split = if split_up && self.helper.is_some() {
            records.len() / 2
        } else {
            0
        };
        let (helped, own) = records.split_at(split);
        let main = self.client.as_mut().expect("connected by statements");
        let helper = self.helper.as_mut().filter(|_| !helped.is_empty());
        let postings_buf = &mut self.postings;
        let record_copy = pgrows::copy_sql("record", batch.partition, &pgrows::RECORD_FIELDS);
        let postings = pgrows::postings_sql(batch.partition);
        std::thread::scope(|scope| -> Result<(), WriteError> {
            // The helper copies, says how that went, then waits to be told to
            // commit (or not: its transaction is then rolled back).
            let (copied_tx, copied_rx) = std::sync::mpsc::channel::<Result<(), WriteError>>();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
            let side = helper.map(|client| {
                let (record_copy, postings) = (&record_copy, &postings);
                scope.spawn(move || -> Result<(), WriteError> {
                    let copied = client.transaction().map_err(db).and_then(|mut tx| {
                        let rows =
                            pgrows::CopyRows::of(part, node, first, helped, &pgrows::RECORD_FIELDS);
                        copy(&mut tx, record_copy.as_str(), &rows)?;
                        let listed = pgrows::Postings::of(helped, first);
                        insert_postings(&mut tx, postings.as_str(), (part, node), &listed)?;
                        Ok(tx)
                    });
                    match copied {
                        Ok(tx) => {
                            let _ = copied_tx.send(Ok(()));
                            match go_rx.recv() {
                                Ok(true) => tx.commit().map_err(db),
                                _ => Ok(()),
                            }
                        }
                        Err(e) => {
                            let _ = copied_tx.send(Err(e.clone()));
                            Err(e)
                        }
                    }
                })
            });
            let mut tx = main.transaction().map_err(db)?;
            let own_first = first + helped.len() as i64;
            let rows = pgrows::CopyRows::of(part, node, own_first, own, &pgrows::RECORD_FIELDS);
            let placed = batch.outcomes;
            let copied = copy(&mut tx, &statements.record_copy, &rows).and_then(|()| {
                postings_buf.fill(own, own_first);
                insert_postings(&mut tx, &statements.postings, (part, node), postings_buf)?;
                let rows = pgrows::CopyRows::of(
                    part,
                    node,
                    batch.first_outcome + placed.blocked as i64,
                    placed.rows(),
                    &pgrows::OUTCOME_FIELDS,
                );
                copy(&mut tx, &statements.outcome_copy, &rows)?;
                let mut first = batch.first_outcome;
                for block in placed.blocks() {
                    pgevents::insert(
                        &mut tx,
                        &statements.block_insert,
                        (part, node),
                        first,
                        block,
                    )
                    .map_err(db)?;
                    first += block.len() as i64;
                }
                Ok(())
            });
            if let Some(side) = side {
                let helped_copied = copied_rx.recv().unwrap_or_else(|_| {
                    Err(WriteError::Database {
                        reason: "database_error",
                        message: "the helper connection's thread stopped".into(),
                    })
                });
                let both = copied.is_ok() && helped_copied.is_ok();
                let _ = go_tx.send(both);
                let committed = side.join().unwrap_or_else(|_| {
                    Err(WriteError::Database {
                        reason: "database_error",
                        message: "the helper connection's thread panicked".into(),
                    })
                });
                helped_copied?;
                copied.clone()?;
                committed?;
            }
            copied?;
            if let Some(head) = head {
                insert_head(&mut tx, part, node, head)?;
            }
            if let Some((journal, frame, tag)) = &batch.journal {
                tx.execute(
                    pgrows::SET_JOURNAL_FRAME.as_str(),
                    &[&part, &node, journal, frame, &tag.as_slice()],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    /// Signs the waiting leaves of every open partition, a transaction each, after
    /// opening again those of [`Reseal`] that are due; a partition that fails is
    /// forgotten (and tried again later). Returns the failures.
    pub fn seal_all(
        &mut self,
        key: &ring::signature::Ed25519KeyPair,
        now: i64,
    ) -> Vec<(PartitionId, WriteError)> {
        let mut failed = Vec::new();
        let tries = self.reseal.take_due();
        for (&partition, &n) in &tries {
            if self.open.contains_key(&partition) {
                continue;
            }
            // `Ok(None)`: expiry removed it meanwhile; nothing left to sign.
            if let Err(e) = self.open(partition, now, Some(key)) {
                self.reseal.failed(partition, n);
                failed.push((partition, e));
            }
        }
        let waiting: Vec<PartitionId> = self
            .open
            .iter()
            .filter(|(_, o)| o.tree.unsigned() > 0)
            .map(|(p, _)| *p)
            .collect();
        for partition in waiting {
            if let Err(e) = self.seal(partition, key, now) {
                self.forget(partition);
                self.reseal
                    .failed(partition, tries.get(&partition).copied().unwrap_or(0));
                failed.push((partition, e));
            }
        }
        failed
    }

    /// Signs the waiting leaves of one open partition, in a transaction of its own.
    fn seal(
        &mut self,
        partition: PartitionId,
        key: &ring::signature::Ed25519KeyPair,
        now: i64,
    ) -> Result<(), WriteError> {
        let (node, name) = (self.target.node, self.target.node_name.clone());
        // Connected first: a reconnection reads the trees again (see connect_locked).
        self.client()?;
        let Some(mut tree) = self.open.get(&partition).map(|o| o.tree.clone()) else {
            return Ok(());
        };
        let client = self.client.as_mut().expect("connected just above");
        let mut tx = client.transaction().map_err(db)?;
        sign(
            &mut tx,
            &mut tree,
            key,
            partition,
            schema::part(partition),
            node,
            &name,
            now,
        )?;
        tx.commit().map_err(db)?;
        if let Some(o) = self.open.get_mut(&partition) {
            o.tree = tree;
        }
        Ok(())
    }
}

/// Who holds node lock `key` in this database, as far as this role may see: the
/// session's pid, role, application and address; "this writer's previous session" for
/// `own` (a connection lost on this side before the server noticed). Never an error:
/// the lock's holder is only told, not needed.
fn lock_holder(client: &mut postgres::Client, key: i64, own: Option<i32>) -> String {
    let row = client.query(
        "SELECT a.pid, format('pid %s, role %s, application %L, from %s', a.pid, a.usename, \
         a.application_name, CASE WHEN a.usename = current_user \
         THEN coalesce(a.client_addr::text, 'a local socket') ELSE 'an address not shown to this role' END) \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND l.classid = $1 AND l.objid = $2",
        &[&((key >> 32) as u32), &(key as u32)],
    );
    match row.as_deref().map(|rows| rows.first()) {
        Ok(Some(r)) if own == Some(r.get::<_, i32>(0)) => {
            "this writer's previous session, ending".into()
        }
        Ok(Some(r)) => r.get(1),
        Ok(None) => "a session gone since".into(),
        Err(_) => "unknown".into(),
    }
}

/// Closed partitions to open again and sign, each with when it is next due: at once
/// when added, then after 1 s, 2 s, 4 s … up to a minute after each failed try (a
/// partition that cannot be opened is not read ten times a second).
#[derive(Default)]
struct Reseal(HashMap<PartitionId, (std::time::Instant, u32)>);

impl Reseal {
    /// Due now (a partition already listed keeps its pause).
    fn add(&mut self, p: PartitionId) {
        self.0.entry(p).or_insert((std::time::Instant::now(), 0));
    }

    /// Due again after a pause that doubles with each failure (`tries` before this one).
    fn failed(&mut self, p: PartitionId, tries: u32) {
        let tries = tries + 1;
        let pause = std::time::Duration::from_secs(1 << tries.min(6)).min(RESEAL_PAUSE_MAX);
        self.0.insert(p, (std::time::Instant::now() + pause, tries));
    }

    fn due(&self) -> usize {
        let now = std::time::Instant::now();
        self.0.values().filter(|(at, _)| *at <= now).count()
    }

    /// The due ones with their failed tries so far, taken off the list (a failure
    /// puts one back with [`Reseal::failed`]).
    fn take_due(&mut self) -> HashMap<PartitionId, u32> {
        let now = std::time::Instant::now();
        let due: HashMap<PartitionId, u32> = self
            .0
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, (_, tries))| (*p, *tries))
            .collect();
        for p in due.keys() {
            self.0.remove(p);
        }
        due
    }
}

/// The longest pause between two tries of a partition to open again and sign.
const RESEAL_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Records a batch splits between two connections from (see [`PgSink::write_copy`]).
pub const PARALLEL_ROWS: usize = 2048;

/// Batches of fewer rows (records and outcome events) go in as one statement of
/// array parameters (see [`pgrows`]); larger ones by COPY, whose cost per row is
/// lower once its round trips are shared by enough rows.
pub const ONE_STATEMENT_ROWS: usize = 1024;

/// A partition's statements, prepared on the writer's connection.
#[derive(Clone)]
struct Statements {
    record_copy: postgres::Statement,
    outcome_copy: postgres::Statement,
    /// [`pgrows::insert_sql`].
    insert: postgres::Statement,
    /// [`pgevents::insert_sql`].
    block_insert: postgres::Statement,
    /// [`pgrows::postings_sql`].
    postings: postgres::Statement,
}

/// One partition's share of a batch, as [`PgSink::write`] passes it on.
struct Batch<'a> {
    partition: PartitionId,
    part: i32,
    /// The ids the first record and the first outcome event get.
    first_record: i64,
    first_outcome: i64,
    records: &'a [&'a Row],
    /// The outcome events, in the order they get their ids.
    outcomes: &'a pgevents::Placed<'a, 'a>,
    /// The journal's id, the newest of its frames the batch holds and the row's tag,
    /// when the partition is to record it.
    journal: Option<(&'a str, i64, [u8; 32])>,
}

/// The last frame of journal `id` that `node`'s rows in `partition` hold (0: none, or
/// another journal's: a node whose journal directory was made anew). A row whose tag
/// does not verify is an error: taken at its word, it could make the node skip rows.
fn journal_frame(
    client: &mut postgres::Client,
    partition: PartitionId,
    node: i16,
    id: &str,
    tagger: &super::keys::NodeTagger,
) -> Result<u64, WriteError> {
    let part = schema::part(partition);
    let row = client
        .query_opt(
            "SELECT part, journal, frame, tag FROM relaylog.journal_frame WHERE part = $1 AND node = $2",
            &[&part, &node],
        )
        .map_err(db)?;
    Ok(match row {
        Some(r) => authentic_frame(&r, node, id, tagger)?,
        None => 0,
    })
}

/// The newest frame of journal `id` any of `node`'s `journal_frame` rows records, each
/// of the node's rows checked (whatever its journal: a row moved to another journal's
/// id must not pass the start and fail only later, partition by partition). Also what
/// `check-config` runs.
pub fn journal_frames(
    client: &mut postgres::Client,
    node: i16,
    id: &str,
    tagger: &super::keys::NodeTagger,
) -> Result<u64, WriteError> {
    let rows = client
        .query(
            "SELECT part, journal, frame, tag FROM relaylog.journal_frame WHERE node = $1",
            &[&node],
        )
        .map_err(db)?;
    let mut newest = 0;
    for r in &rows {
        newest = newest.max(authentic_frame(r, node, id, tagger)?);
    }
    Ok(newest)
}

/// A `journal_frame` row's frame if it is journal `id`'s (0 if another's), once its
/// tag verifies; a row changed in the database alone is an error naming it.
fn authentic_frame(
    r: &postgres::Row,
    node: i16,
    id: &str,
    tagger: &super::keys::NodeTagger,
) -> Result<u64, WriteError> {
    let (part, journal, frame, tag): (i32, &str, i64, &[u8]) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    if !tagger.verify_frame(part, node, journal, frame, tag) {
        return Err(WriteError::Database {
            reason: "journal_frame_unauthenticated",
            message: format!(
                "the relaylog.journal_frame row of part {part}, node {node} is not one a relaylog node wrote (its tag does not verify): it was changed in the database alone, which should be looked into. Believed, it could make this node skip journaled rows. Deleting it (DELETE FROM relaylog.journal_frame WHERE part = {part} AND node = {node}) lets the node start: the frames its journal still holds for that partition then go in again, possibly a second time, none lost"
            ),
        });
    }
    Ok(if journal == id { frame as u64 } else { 0 })
}

/// Inserts a batch's postings with `stmt` ([`pgrows::postings_sql`]; nothing to do for
/// none).
fn insert_postings<S: postgres::ToStatement + ?Sized>(
    tx: &mut postgres::Transaction<'_>,
    stmt: &S,
    (part, node): (i32, i16),
    postings: &pgrows::Postings,
) -> Result<(), WriteError> {
    use postgres::types::ToSql;
    if postings.is_empty() {
        return Ok(());
    }
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&part, &node];
    params.extend(postings.params());
    tx.execute(stmt, &params).map_err(db)?;
    Ok(())
}

/// Copies `rows` in with `copy` (nothing to do for none).
fn copy<S: postgres::ToStatement + ?Sized>(
    tx: &mut postgres::Transaction<'_>,
    copy: &S,
    rows: &pgrows::CopyRows,
) -> Result<(), WriteError> {
    use std::io::Write;
    if rows.is_empty() {
        return Ok(());
    }
    let mut sink = tx.copy_in(copy).map_err(db)?;
    sink.write_all(rows.bytes())
        .map_err(|e| WriteError::Database {
            reason: "database_unreachable",
            message: e.to_string(),
        })?;
    sink.finish().map_err(db)?;
    Ok(())
}

/// Inserts a signed head of `node`'s tree of partition `part`.
fn insert_head(
    tx: &mut postgres::Transaction<'_>,
    part: i32,
    node: i16,
    next: &integrity::NextHead,
) -> Result<(), WriteError> {
    let h = &next.head;
    tx.execute(
        pgrows::INSERT_HEAD,
        &[
            &part,
            &node,
            &h.seq,
            &(h.size as i64),
            &h.record_through,
            &h.outcome_through,
            &h.root.as_slice(),
            &next.frontier.to_bytes(),
            &h.at_us,
            &next.signature,
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Appends the signed head over `tree`'s waiting leaves in `tx` and moves the tree on.
#[allow(clippy::too_many_arguments)]
fn sign(
    tx: &mut postgres::Transaction<'_>,
    tree: &mut TreeState,
    key: &ring::signature::Ed25519KeyPair,
    partition: PartitionId,
    part: i32,
    node: i16,
    node_name: &str,
    now: i64,
) -> Result<(), WriteError> {
    let Some(next) = tree.next_head(key, partition, Some(node_name), now) else {
        return Ok(());
    };
    insert_head(tx, part, node, &next)?;
    tree.signed(next);
    Ok(())
}

/// `node`'s tree of a partition as of its last head, with the leaves of the rows
/// written after it (a writer that stopped before signing them), in id order, and
/// those its erasure statements kept (signed by `key`, or by the node they name). In
/// one repeatable-read snapshot: an erasure committing meanwhile is seen whole or not
/// at all, never its statement without its deletions or the other way round.
fn load_tree(
    client: &mut postgres::Client,
    partition: PartitionId,
    (node, node_name): (i16, &str),
    key: Option<&ring::signature::Ed25519KeyPair>,
    tagger: &super::keys::NodeTagger,
) -> Result<TreeState, WriteError> {
    let part = schema::part(partition);
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(db)?;
    let last = last_head(&mut tx, part, node).map_err(db)?;
    let statements = erasure_statements(&mut tx, part, node, tagger).map_err(db)?;
    let (rt, ot) = last
        .as_ref()
        .map_or((0, 0), |h| (h.record_through, h.outcome_through));
    let records = tx
        .query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM relaylog.record WHERE part = $1 AND node = $2 AND id > $3 ORDER BY id"
            ),
            &[&part, &node, &rt],
        )
        .map_err(db)?;
    let (rows, blocks) = pgevents::after_sql();
    let rows = tx.query(&rows, &[&part, &node, &ot]).map_err(db)?;
    let blocks = tx.query(&blocks, &[&part, &node, &ot]).map_err(db)?;
    tx.commit().map_err(db)?;
    let outcomes = super::events::merge(
        rows.iter().map(|r| Ok(outcome_row(r))),
        blocks.iter().map(|r| Ok(outcome_row(r))),
    );
    TreeState::resume::<WriteError>(
        last,
        &statements,
        key,
        partition,
        Some(node_name),
        records.iter().map(|r| Ok(record_row(r))),
        outcomes,
    )
}

/// `node`'s erasure statements in a partition, in id order, each with its signer's
/// public key when the signer is a registered node whose row `tagger` authenticates;
/// an empty key otherwise, which verifies nothing (damage, as an unsigned statement
/// is).
pub fn erasure_statements(
    client: &mut impl postgres::GenericClient,
    part: i32,
    node: i16,
    tagger: &super::keys::NodeTagger,
) -> Result<Vec<integrity::ErasureStatement>, postgres::Error> {
    Ok(client
        .query(
            "SELECT e.id, e.at_us, e.reason, e.entries, e.signature, \
             e.signer, n.name, n.public_key, n.key_tag \
             FROM relaylog.erasure e LEFT JOIN relaylog.node n ON n.id = e.signer \
             WHERE e.part = $1 AND e.node = $2 ORDER BY e.id",
            &[&part, &node],
        )?
        .iter()
        .map(|r| {
            let signer: i16 = r.get(5);
            let key: Option<Vec<u8>> = r.get(7);
            let authentic = match (
                r.get::<_, Option<&str>>(6),
                &key,
                r.get::<_, Option<&[u8]>>(8),
            ) {
                (Some(name), Some(key), Some(tag)) => tagger.verify(signer, name, key, tag),
                _ => false,
            };
            integrity::ErasureStatement {
                id: r.get(0),
                at_us: r.get(1),
                reason: r.get(2),
                entries: r.get(3),
                signature: r.get(4),
                signer_key: Some(key.filter(|_| authentic).unwrap_or_default()),
            }
        })
        .collect())
}

/// Erasure on PostgreSQL (offboarding): this node, with its signing key, erases
/// rows of any node's trees, each batch under an erasure statement it signs and that
/// names it as the signer (see [`integrity::ErasureStatement::signer_key`]).
pub struct Eraser<'k> {
    pool: Arc<Pool>,
    names: HashMap<i16, String>,
    signer: i16,
    key: &'k ring::signature::Ed25519KeyPair,
}

impl<'k> Eraser<'k> {
    pub fn new(
        pg: &crate::config::PgConfig,
        key: &'k ring::signature::Ed25519KeyPair,
        tagger: &super::keys::NodeTagger,
    ) -> Result<Eraser<'k>, PgError> {
        let pool = Pool::shared(pg)?;
        let (signer, nodes) = {
            let mut client = pool.get()?;
            let signer = authenticated_node(&mut client, pg, key, tagger)?;
            (signer, schema::nodes(&mut *client)?)
        };
        Ok(Eraser {
            pool,
            names: nodes.into_iter().map(|n| (n.id, n.name)).collect(),
            signer,
            key,
        })
    }

    /// Erases records of `node`'s tree of a partition, and their outcome events, under
    /// one signed erasure statement, which keeps the rows' Merkle leaves so that every
    /// head signed over them still verifies. Returns (records, outcome events) erased.
    pub fn erase(
        &self,
        partition: PartitionId,
        node: i16,
        at_us: i64,
        reason: &str,
        record_ids: &[i64],
    ) -> Result<(usize, usize), PgError> {
        let Some(node_name) = self.names.get(&node) else {
            return Err(PgError::Other(format!(
                "partition {partition}: rows of node id {node}, which is not registered"
            )));
        };
        let mut client = self.pool.get()?;
        erase_records(
            &mut client,
            partition,
            (node, node_name),
            (self.signer, self.key),
            at_us,
            reason,
            record_ids,
        )
    }
}

fn erase_records(
    client: &mut postgres::Client,
    partition: PartitionId,
    (node, node_name): (i16, &str),
    (signer, key): (i16, &ring::signature::Ed25519KeyPair),
    at_us: i64,
    reason: &str,
    record_ids: &[i64],
) -> Result<(usize, usize), PgError> {
    let part = schema::part(partition);
    let mut ids = record_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut tx = client.transaction()?;
    // Erasures one at a time: each statement's id is its tree's next.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&schema::lock::ERASURE],
    )?;
    let records = tx.query(
        &format!(
            "SELECT {RECORD_COLUMNS} FROM relaylog.record \
             WHERE part = $1 AND node = $2 AND id = ANY($3) ORDER BY id"
        ),
        &[&part, &node, &ids],
    )?;
    if records.len() != ids.len() {
        return Err(PgError::Other(format!(
            "partition {partition}/{node_name}: {} of {} records to erase are not there",
            ids.len() - records.len(),
            ids.len()
        )));
    }
    let mut entries = integrity::ErasedEntries::default();
    let mut submissions = Vec::new();
    for r in &records {
        let (id, row) = record_row(r);
        entries.record(id, &row);
        submissions.push(row.submission);
    }
    submissions.sort_unstable();
    submissions.dedup();
    let outcomes = tx.query(
        &format!(
            "SELECT {OUTCOME_COLUMNS} FROM relaylog.outcome \
             WHERE part = $1 AND node = $2 AND submission = ANY($3) ORDER BY id"
        ),
        &[&part, &node, &submissions],
    )?;
    let outcomes: Vec<(i64, OutcomeRow)> = outcomes.iter().map(outcome_row).collect();
    let outcome_ids: Vec<i64> = outcomes.iter().map(|(id, _)| *id).collect();
    // The blocks holding any of them, written again without them, one at a time.
    let mut from_blocks = Vec::new();
    for last in pgevents::blocks_holding(&mut tx, (part, node), &submissions)? {
        let Some(erased) = pgevents::rewrite(&mut tx, partition, node, last, |o| {
            submissions.binary_search(&o.submission).is_ok()
        })?
        else {
            // Found a moment ago in this transaction: rolled back, nothing erased.
            return Err(PgError::Other(format!(
                "partition {partition}/{node_name}: outcome block {last} to rewrite was not there; nothing erased"
            )));
        };
        from_blocks.extend(erased);
    }
    let mut erased_events: Vec<&(i64, OutcomeRow)> = outcomes.iter().chain(&from_blocks).collect();
    erased_events.sort_unstable_by_key(|(id, _)| *id);
    for (id, row) in &erased_events {
        entries.outcome(*id, row);
    }
    let id: i64 = tx
        .query_one(
            "SELECT coalesce(max(id), 0) + 1 FROM relaylog.erasure WHERE part = $1 AND node = $2",
            &[&part, &node],
        )?
        .get(0);
    let entries = entries.0;
    let message =
        integrity::erasure_message_of(partition, Some(node_name), id, at_us, reason, &entries);
    let signature = key.sign(&message);
    tx.execute(
        "INSERT INTO relaylog.erasure (part, node, id, at_us, reason, entries, signature, signer) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &part,
            &node,
            &id,
            &at_us,
            &reason,
            &entries,
            &signature.as_ref(),
            &signer,
        ],
    )?;
    // Their ids out of their postings first (found by the records' tags): an erased
    // record's tags are not kept.
    for sql in pgrows::unlist_sql(partition) {
        tx.execute(&sql, &[&node, &ids])?;
    }
    let records = tx.execute(
        "DELETE FROM relaylog.record WHERE part = $1 AND node = $2 AND id = ANY($3)",
        &[&part, &node, &ids],
    )?;
    let outcomes = tx.execute(
        "DELETE FROM relaylog.outcome WHERE part = $1 AND node = $2 AND id = ANY($3)",
        &[&part, &node, &outcome_ids],
    )?;
    if (records, outcomes) != (ids.len() as u64, outcome_ids.len() as u64) {
        // Read a moment ago in this transaction: rolled back, nothing erased.
        return Err(PgError::Other(format!(
            "partition {partition}/{node_name}: {records} of {} records and {outcomes} of {} outcome events deleted; nothing erased",
            ids.len(),
            outcome_ids.len()
        )));
    }
    tx.commit()?;
    Ok((ids.len(), erased_events.len()))
}

/// Rows of a portal, fetched a slice at a time: a partition's tree is read in order
/// without holding it all in memory, two portals (records, outcomes) side by side in
/// one transaction.
struct Portal<'a, 't, T> {
    tx: &'a std::cell::RefCell<postgres::Transaction<'t>>,
    portal: postgres::Portal,
    buf: std::collections::VecDeque<postgres::Row>,
    done: bool,
    map: fn(&postgres::Row) -> (i64, T),
}

/// Rows fetched per round trip when reading a tree.
const PORTAL_ROWS: i32 = 8192;

impl<T> Iterator for Portal<'_, '_, T> {
    type Item = Result<(i64, T), postgres::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            match self.tx.borrow_mut().query_portal(&self.portal, PORTAL_ROWS) {
                Ok(rows) => {
                    self.done = rows.len() < PORTAL_ROWS as usize;
                    self.buf.extend(rows);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.buf.pop_front().map(|r| Ok((self.map)(&r)))
    }
}

/// Recomputes `node`'s tree of a partition head by head (see
/// [`integrity::verify_tree`]), in one repeatable-read transaction: a snapshot, so
/// that a live writer's commits meanwhile are not half seen.
pub fn verify_tree(
    client: &mut postgres::Client,
    partition: PartitionId,
    node: &schema::Node,
    tagger: &super::keys::NodeTagger,
    now_us: i64,
) -> Result<integrity::Verified, postgres::Error> {
    let (node_name, public_key) = (node.name.as_str(), node.public_key.as_slice());
    let node = node.id;
    let part = schema::part(partition);
    let tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let tx = std::cell::RefCell::new(tx);
    let heads = tx
        .borrow_mut()
        .query(
            "SELECT seq, size, record_through, outcome_through, root, at_us, signature \
             FROM relaylog.head WHERE part = $1 AND node = $2 ORDER BY seq",
            &[&part, &node],
        )?
        .iter()
        .map(signed_head)
        .collect();
    let statements = erasure_statements(&mut *tx.borrow_mut(), part, node, tagger)?;
    let records = tx.borrow_mut().bind(
        &*format!(
            "SELECT {RECORD_COLUMNS} FROM relaylog.record WHERE part = $1 AND node = $2 ORDER BY id"
        ),
        &[&part, &node],
    )?;
    let (rows, blocks) = pgevents::all_sql();
    let outcome_rows = tx.borrow_mut().bind(&*rows, &[&part, &node])?;
    let outcome_blocks = tx.borrow_mut().bind(&*blocks, &[&part, &node])?;
    let input = integrity::TreeInput {
        heads,
        records: Portal {
            tx: &tx,
            portal: records,
            buf: Default::default(),
            done: false,
            map: record_row,
        },
        outcomes: super::events::merge(
            Portal {
                tx: &tx,
                portal: outcome_rows,
                buf: Default::default(),
                done: false,
                map: outcome_row,
            },
            Portal {
                tx: &tx,
                portal: outcome_blocks,
                buf: Default::default(),
                done: false,
                map: outcome_row,
            },
        ),
        statements,
        frontier_at: |seq: i64| {
            let row = tx
                .borrow_mut()
                .query_opt(
                    "SELECT size, frontier FROM relaylog.head WHERE part = $1 AND node = $2 AND seq = $3",
                    &[&part, &node, &seq],
                )
                .ok()??;
            integrity::Frontier::from_bytes(row.get::<_, i64>(0) as u64, row.get(1))
        },
    };
    let mut verified =
        integrity::verify_tree(input, partition, Some(node_name), public_key, now_us)?;
    // The postings against the records, in the same snapshot: they are derived from
    // the records, which the tree covers, and nothing else checks them.
    let [unlisted, unmatched] = pgrows::postings_check_sql();
    // Each compares a whole partition's entries (sorted or hashed, spilling to disk):
    // no statement timeout for this transaction, whose verdict a timeout would turn
    // into "unreadable".
    tx.borrow_mut()
        .batch_execute("SET LOCAL statement_timeout = 0")?;
    let count = |sql: &str| -> Result<i64, postgres::Error> {
        Ok(tx.borrow_mut().query_one(sql, &[&part, &node])?.get(0))
    };
    let (unlisted, unmatched) = (count(&unlisted)?, count(&unmatched)?);
    if unlisted != 0 || unmatched != 0 {
        verified.damage.push(integrity::Damage::Postings {
            unlisted,
            unmatched,
        });
    }
    Ok(verified)
}

/// `verify` on PostgreSQL: every node's tree of every partition overlapping
/// `[since, until)`, oldest first, each checked against its node's public key as
/// registered, once the node's row is shown to be one a holder of the master key
/// wrote (its `key_tag`: see [`super::keys::NodeTagger`]; a row added or changed in
/// the database alone is damage, and its tree is not read); this node's own key must
/// be the one its key file holds. Needs the keyring, for the master key.
pub fn verify_store(
    cfg: &crate::config::StoreConfig,
    pg: &crate::config::PgConfig,
    keyring: Option<&super::keys::Keyring>,
    own_public_key: &[u8],
    since: i64,
    until: i64,
) -> Result<Vec<integrity::PartitionReport>, PgError> {
    let Some(keyring) = keyring else {
        return Err(PgError::Other(
            "verify on PostgreSQL needs the master key: it authenticates the nodes' keys the database holds".into(),
        ));
    };
    let tagger = keyring.master().node_tagger();
    let pool = Pool::shared(pg)?;
    let mut client = pool.get()?;
    let nodes = schema::nodes(&mut *client)?;
    if let Some(own) = nodes.iter().find(|n| n.name == pg.node)
        && own.public_key != own_public_key
    {
        return Err(PgError::NodeKey(own.name.clone()));
    }
    let now = chrono::Utc::now().timestamp_micros();
    let mut out = Vec::new();
    for p in schema::partitions(&mut *client, cfg.partition)?
        .into_iter()
        .filter(|p| p.start_micros() < until && p.end_micros() > since)
    {
        let keys_missing = !keyring.exists(p);
        for node in &nodes {
            let verified = if node.authentic(&tagger) {
                verify_tree(&mut client, p, node, &tagger, now).unwrap_or_else(|e| {
                    integrity::Verified {
                        damage: vec![integrity::Damage::Unreadable(PgError::from(e).to_string())],
                        ..integrity::Verified::default()
                    }
                })
            } else {
                integrity::Verified {
                    damage: vec![integrity::Damage::Unreadable(
                        "the node's row is not authenticated by the master key (added or changed outside `relaylog init`): its key is not trusted".into(),
                    )],
                    ..integrity::Verified::default()
                }
            };
            out.push(integrity::PartitionReport {
                partition: p,
                node: Some(node.name.clone()),
                verified,
                keys_missing,
            });
        }
    }
    Ok(out)
}

/// Records a partition has held, over every node: each node's highest record id (ids
/// are never reused, so erased rows count too), as [`super::expiry`] counts them.
pub fn record_count(pool: &Arc<Pool>, p: PartitionId) -> Result<u64, PgError> {
    let n: i64 = pool
        .get()?
        .query_one(
            "SELECT coalesce(sum(top), 0)::bigint FROM \
             (SELECT max(id) AS top FROM relaylog.record WHERE part = $1 GROUP BY node) t",
            &[&schema::part(p)],
        )?
        .get(0);
    Ok(n.max(0) as u64)
}

/// What a partition has held, over every node, for its deletion certificate:
/// records and outcomes (each node's highest id, or its last head's if erased rows
/// were the highest), and whether the partition is still listed.
pub fn partition_counts(pool: &Arc<Pool>, p: PartitionId) -> Result<(u64, u64, bool), PgError> {
    let row = pool.get()?.query_one(
        "SELECT coalesce(sum(greatest(coalesce(r, 0), coalesce(hr, 0))), 0)::bigint, \
                coalesce(sum(greatest(coalesce(o, 0), coalesce(ho, 0))), 0)::bigint, \
                EXISTS (SELECT 1 FROM relaylog.partition WHERE name = $2) \
         FROM (SELECT \
           (SELECT max(id) FROM relaylog.record WHERE part = $1 AND node = n.id) AS r, \
           (SELECT max(id) FROM relaylog.outcome WHERE part = $1 AND node = n.id) AS o, \
           (SELECT record_through FROM relaylog.head WHERE part = $1 AND node = n.id \
             ORDER BY seq DESC LIMIT 1) AS hr, \
           (SELECT outcome_through FROM relaylog.head WHERE part = $1 AND node = n.id \
             ORDER BY seq DESC LIMIT 1) AS ho \
         FROM relaylog.node n) t",
        &[&schema::part(p), &p.to_string()],
    )?;
    let (records, outcomes): (i64, i64) = (row.get(0), row.get(1));
    Ok((records.max(0) as u64, outcomes.max(0) as u64, row.get(2)))
}

/// The tables made per partition (`<table>_<suffix>`, attached to `relaylog.<table>`).
const PARTITIONED_TABLES: [&str; 4] = ["record", "posting", "outcome", "outcome_block"];

/// Each partition with the bytes its tables take (indexes and TOAST included),
/// oldest first. The tables' names are made here, as [`drop_partition`] makes them.
pub fn partition_sizes(pool: &Arc<Pool>) -> Result<Vec<(PartitionId, u64)>, PgError> {
    let mut client = pool.get()?;
    let parts: Vec<PartitionId> = client
        .query("SELECT name FROM relaylog.partition ORDER BY name", &[])?
        .iter()
        .filter_map(|r| PartitionId::parse(r.get::<_, &str>(0)))
        .collect();
    let (mut names, mut tables) = (Vec::new(), Vec::new());
    for p in &parts {
        let suffix = schema::table_suffix(*p);
        for table in PARTITIONED_TABLES {
            names.push(p.to_string());
            tables.push(format!("relaylog.{table}_{suffix}"));
        }
    }
    let rows = client.query(
        "SELECT t.name, coalesce(sum(pg_total_relation_size(to_regclass(t.rel))), 0)::bigint \
         FROM unnest($1::text[], $2::text[]) AS t(name, rel) GROUP BY t.name",
        &[&names, &tables],
    )?;
    let bytes: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(parts
        .into_iter()
        .map(|p| {
            let b = bytes.get(&p.to_string()).copied().unwrap_or(0);
            (p, b.max(0) as u64)
        })
        .collect())
}

/// Removes a partition whose keys are already shredded: its tables detached (without
/// stopping the writers: `DETACH … CONCURRENTLY`) and dropped, then its heads, erasure
/// statements and its entry. Each step is safe to run again: a crash between two is
/// finished by the next expiry (the entry, removed last, keeps it a candidate).
pub fn drop_partition(pool: &Arc<Pool>, p: PartitionId) -> Result<(), PgError> {
    let suffix = schema::table_suffix(p);
    let mut client = pool.get()?;
    for table in PARTITIONED_TABLES {
        let child = format!("relaylog.{table}_{suffix}");
        // Still attached, and whether a detach begun before was cut short (its
        // second phase then has to be finished, not begun again).
        let attached: Option<bool> = client
            .query_opt(
                "SELECT i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'relaylog' AND c.relname = $1",
                &[&format!("{table}_{suffix}")],
            )?
            .map(|r| r.get(0));
        let detach = match attached {
            None => None,
            Some(true) => Some("FINALIZE"),
            Some(false) => Some("CONCURRENTLY"),
        };
        crate::pg::unbounded(&mut client, |c| {
            if let Some(how) = detach {
                c.batch_execute(&format!(
                    "ALTER TABLE relaylog.{table} DETACH PARTITION {child} {how}"
                ))?;
            }
            c.batch_execute(&format!("DROP TABLE IF EXISTS {child}"))
        })?;
    }
    let part = schema::part(p);
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&schema::lock::PARTITIONS],
    )?;
    tx.execute("DELETE FROM relaylog.head WHERE part = $1", &[&part])?;
    tx.execute("DELETE FROM relaylog.erasure WHERE part = $1", &[&part])?;
    tx.execute(
        "DELETE FROM relaylog.journal_frame WHERE part = $1",
        &[&part],
    )?;
    tx.execute(
        "DELETE FROM relaylog.partition WHERE name = $1",
        &[&p.to_string()],
    )?;
    tx.commit()?;
    Ok(())
}

/// The last signed head of every authenticated node's tree of each partition:
/// (partition, node, node's public key, head, signature), partitions in the order
/// given, nodes by id.
#[allow(clippy::type_complexity)]
pub fn latest_heads(
    pool: &Arc<Pool>,
    partitions: &[PartitionId],
    tagger: &super::keys::NodeTagger,
) -> Result<Vec<(PartitionId, String, Vec<u8>, integrity::Head, Vec<u8>)>, PgError> {
    let mut client = pool.get()?;
    // Only nodes whose rows the master key's holders wrote: a manifest never vouches
    // for a key someone put in the database.
    let nodes: Vec<schema::Node> = schema::nodes(&mut *client)?
        .into_iter()
        .filter(|n| n.authentic(tagger))
        .collect();
    let stmt = client.prepare(
        "SELECT seq, size, record_through, outcome_through, root, at_us, signature \
         FROM relaylog.head WHERE part = $1 AND node = $2 ORDER BY seq DESC LIMIT 1",
    )?;
    let mut out = Vec::new();
    for &p in partitions {
        for n in &nodes {
            let Some(r) = client.query_opt(&stmt, &[&schema::part(p), &n.id])? else {
                continue;
            };
            let (head, signature) = signed_head(&r);
            out.push((p, n.name.clone(), n.public_key.clone(), head, signature));
        }
    }
    Ok(out)
}

/// Builds the read-optimised indexes of every partition closed for longer than the
/// compaction grace (see [`super::compact::is_due`]) that has none yet, until `stop`:
/// PostgreSQL's counterpart of compaction.
pub fn index_closed_due(
    pool: &Arc<Pool>,
    granularity: Granularity,
    now: i64,
    stop: &dyn Fn() -> bool,
) -> Vec<(PartitionId, Result<super::compact::Compacted, PgError>)> {
    let mut done = Vec::new();
    let due: Vec<PartitionId> = match pool
        .get()
        .and_then(|mut c| schema::partitions_indexed(&mut *c, granularity))
    {
        Ok(all) => all
            .into_iter()
            .filter(|(p, indexed)| !indexed && super::compact::is_due(*p, now))
            .map(|(p, _)| p)
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot list the partitions to index");
            return done;
        }
    };
    for p in due {
        if stop() {
            break;
        }
        let started = std::time::Instant::now();
        let result = pool.get().and_then(|mut c| {
            let built = schema::index_closed(&mut c, p, now)?;
            let records = if built { record_count(pool, p)? } else { 0 };
            Ok((built, records))
        });
        match result {
            Ok((false, _)) => {}
            Ok((true, records)) => done.push((
                p,
                Ok(super::compact::Compacted {
                    records,
                    seconds: started.elapsed().as_secs_f64(),
                }),
            )),
            Err(e) => done.push((p, Err(e))),
        }
    }
    done
}

/// This node's turn at expiry: a session advisory lock held on a client of its own
/// until dropped; `None` while another node has it.
pub fn expiry_turn(pool: &Arc<Pool>) -> Result<Option<ExpiryTurn>, PgError> {
    // A connection of its own: closing it (whatever happens) releases the lock, and
    // it takes no place in the pool the run itself needs.
    let mut client = pool.connect()?;
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&schema::lock::EXPIRY])?
        .get(0);
    Ok(got.then_some(ExpiryTurn(client)))
}

/// See [`expiry_turn`]. Dropped off the runtime's threads (expiry runs there).
pub struct ExpiryTurn(postgres::Client);

impl Drop for ExpiryTurn {
    fn drop(&mut self) {
        // Closing the connection would release it too; said, so that it goes now.
        let _ = self
            .0
            .execute("SELECT pg_advisory_unlock($1)", &[&schema::lock::EXPIRY]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition to open again and sign is due at once, then after a pause that
    /// grows with each failure and stops growing at a minute.
    #[test]
    fn a_partition_that_keeps_failing_is_tried_less_and_less_often() {
        let p = PartitionId::parse("2026-11-01").unwrap();
        let mut r = Reseal::default();
        r.add(p);
        assert_eq!(r.due(), 1);
        let taken = r.take_due();
        assert_eq!(taken.get(&p), Some(&0));
        assert_eq!(r.due(), 0);
        r.failed(p, 0);
        assert_eq!(r.due(), 0, "not again at once");
        r.add(p);
        assert_eq!(r.0[&p].1, 1, "adding keeps the pause and the count");
        let mut pauses = Vec::new();
        for tries in 0..10 {
            r.failed(p, tries);
            let (at, _) = r.0[&p];
            pauses.push(
                at.saturating_duration_since(std::time::Instant::now())
                    .as_secs()
                    + 1,
            );
        }
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert!(pauses.iter().all(|s| *s <= 60), "{pauses:?}");
        assert!(
            pauses[0] <= 2 && *pauses.last().unwrap() >= 59,
            "{pauses:?}"
        );
    }
}
