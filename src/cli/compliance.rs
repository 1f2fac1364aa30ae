//! The compliance commands: officers, cases, disclosure, subject export, offboarding,
//! the audit log, reports.

use super::*;

/// An officer's login, for the commands that read records or the ledger or change
/// holds and officers: the name and a TOTP code as arguments, the password on standard
/// input (as `disclose` takes them). Not needed under `compliance.single-operator =
/// true`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Login {
    /// The officer acting; the password is read from standard input.
    #[arg(long)]
    pub officer: Option<String>,
    /// The current code of the officer's authenticator.
    #[arg(long, requires = "officer")]
    pub totp: Option<String>,
}

/// Who runs `action` (as the audit log names it) on the command line: the
/// officer logged in with password and TOTP code, whose role must allow `needed`
/// (failures audited by [`crate::ledger::Ledger::authenticate`]); or, under
/// `compliance.single-operator = true` and without `--officer`, the login user,
/// audited as `single-operator.run`. Returns the actor for the audit log.
pub(super) fn login(
    config: &Config,
    ledger: &mut crate::ledger::Ledger,
    login: &Login,
    needed: crate::compliance::officers::Role,
    action: &str,
) -> Result<String> {
    use crate::compliance::officers::Credentials;
    let now = SystemClock.now_micros();
    // Off until an installation says otherwise: only a change from that is recorded.
    ledger.note_setting(
        "single_operator",
        config.compliance.single_operator,
        Some(false),
        now,
        &actor(),
    )?;
    match (&login.officer, &login.totp) {
        (Some(name), Some(totp)) => {
            let master = crate::store::keys::MasterKey::load(&config.store.master_key)?;
            let password = read_secret_line("password")?;
            let who = Credentials {
                name,
                password: &password,
                totp: Some(totp),
            };
            Ok(ledger
                .authenticate(&master, who, needed, now, action, &local_peer())?
                .name)
        }
        (Some(_), None) => {
            bail!("--officer needs --totp CODE, the current code of the officer's authenticator")
        }
        (None, _) if config.compliance.single_operator => {
            let actor = format!("single-operator:{}", actor());
            ledger.audit(
                now,
                &actor,
                "single-operator.run",
                serde_json::json!({"for": action}),
            )?;
            Ok(actor)
        }
        (None, _) => bail!(
            "`{action}` needs an officer's login: --officer NAME --totp CODE, with the password on standard input (an installation run by one person may set compliance.single-operator = true instead)"
        ),
    }
}

/// [`login`], then an audit entry of `action` alone under the actor (for lists, whose
/// entry names nothing else). Returns the actor.
pub(super) fn login_and_audit(
    config: &Config,
    ledger: &mut crate::ledger::Ledger,
    who: &Login,
    needed: crate::compliance::officers::Role,
    action: &str,
) -> Result<String> {
    let actor = login(config, ledger, who, needed, action)?;
    ledger.audit(
        SystemClock.now_micros(),
        &actor,
        action,
        serde_json::json!({}),
    )?;
    Ok(actor)
}

#[derive(Debug, Subcommand)]
pub enum OfficerCommand {
    /// Add an officer. The password is read from the first line of standard input;
    /// the TOTP enrolment URI is printed once, for the officer's authenticator app.
    /// The first officer needs no login; after that, an admin's (whose password comes
    /// first on standard input, the new officer's on the line after).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: crate::compliance::officers::Role,
        #[command(flatten)]
        login: Login,
    },
    /// List officers, their roles and whether they are enabled (an admin's login).
    List {
        #[command(flatten)]
        login: Login,
    },
    /// Disable an officer, kept for the audit trail (an admin's login).
    Disable {
        name: String,
        #[command(flatten)]
        login: Login,
    },
    /// Lift an officer's lockout after repeated failed logins (an admin's login).
    Unlock {
        name: String,
        #[command(flatten)]
        login: Login,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaseCommand {
    /// Open a case (the officer's password is read from standard input).
    Open(Box<CaseOpenArgs>),
    /// Approve an open case: an approver other than its opener, password on standard
    /// input and a TOTP code.
    Approve(DecideArgs),
    /// Reject an open case, with a reason.
    Reject(DecideArgs),
    /// Close a case: nothing more is disclosed under it.
    Close {
        id: i64,
        #[arg(long)]
        officer: String,
    },
    /// Show a case (identifiers by kind and audit tag only; an officer's login).
    Show {
        id: i64,
        #[command(flatten)]
        login: Login,
    },
    /// List the cases (an officer's login).
    List {
        #[command(flatten)]
        login: Login,
    },
}

#[derive(Debug, clap::Args)]
pub struct CaseOpenArgs {
    #[arg(long)]
    pub officer: String,
    /// The requesting authority, by name.
    #[arg(long)]
    pub authority: String,
    /// ETSI TS 102 657 request id, part 1: the country code (e.g. NL).
    #[arg(long)]
    pub country: String,
    /// Part 2: the authorised organisation's id.
    #[arg(long)]
    pub organisation: String,
    /// Part 3: the organisation's request number.
    #[arg(long)]
    pub request: String,
    #[arg(long)]
    pub legal_basis: String,
    #[arg(long)]
    pub order_ref: String,
    #[arg(long)]
    pub order_date: String,
    #[arg(long)]
    pub deadline: String,
    /// Records of a confidential case are left out of data-subject exports.
    #[arg(long)]
    pub confidential: bool,
    #[arg(long)]
    pub since: String,
    /// End of the window (a date includes that day).
    #[arg(long)]
    pub until: String,
    #[arg(long)]
    pub recipient: Vec<String>,
    #[arg(long)]
    pub originator: Vec<String>,
    #[arg(long)]
    pub account: Vec<String>,
    #[arg(long)]
    pub ip: Vec<String>,
    #[arg(long)]
    pub email: Vec<String>,
}

impl CaseOpenArgs {
    fn form(&self) -> crate::compliance::cases::CaseForm {
        use crate::compliance::cases::{CaseForm, Identifiers};
        CaseForm {
            authority: self.authority.clone(),
            country: self.country.clone(),
            organisation: self.organisation.clone(),
            request: self.request.clone(),
            legal_basis: self.legal_basis.clone(),
            order_reference: self.order_ref.clone(),
            order_date: self.order_date.clone(),
            deadline: self.deadline.clone(),
            confidential: self.confidential,
            since: self.since.clone(),
            until: self.until.clone(),
            identifiers: Identifiers {
                recipient: self.recipient.clone(),
                originator: self.originator.clone(),
                account: self.account.clone(),
                ip: self.ip.clone(),
                email: self.email.clone(),
            },
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Export an account's records to DIR, erase them (and their outcome events) from
    /// every partition, and write a signed deletion statement. An admin officer's
    /// password on standard input, and a TOTP code.
    Offboard {
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        officer: String,
        #[arg(long)]
        totp: String,
        /// Why the records are read (contract-end, as a rule).
        #[arg(long, value_enum)]
        purpose: crate::compliance::purpose::Purpose,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Lawful requests of a year: cases, records disclosed, the age of the records
    /// asked for, requests that could not be met.
    Cases {
        #[arg(long)]
        year: i32,
        #[arg(long)]
        json: bool,
    },
    /// Evidence of retention: the oldest record held, what past retention is kept and
    /// why, every partition accounted for, and the deletion certificates with the keys
    /// that verify them (check them with `relaylog verify-retention`).
    Retention {
        /// The report as JSON on standard output (unsigned).
        #[arg(long, conflicts_with = "out")]
        json: bool,
        /// Write the report to FILE (JSON) signed with the installation's key
        /// (FILE.sig), for `relaylog verify-retention`. Never overwrites.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubjectCommand {
    /// Everything held about one number or address, with each record's deletion date
    /// (password on standard input, and a TOTP code). With --request, the subject is
    /// that request's, and the export answers (closes) it.
    Export(SubjectExportArgs),
    /// Data subjects' requests and their deadlines (GDPR art. 12(3): one month from
    /// receipt, extendable once by two months with a reason).
    #[command(subcommand)]
    Request(RequestCommand),
}

#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// Record a request received on --received (an officer's login); prints its id and
    /// deadline.
    #[command(group(clap::ArgGroup::new("subject").required(true).args(["recipient", "email"])))]
    Open {
        #[arg(long)]
        recipient: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// The day the request was received (YYYY-MM-DD, a UTC date as every date of
        /// a request).
        #[arg(long)]
        received: String,
        #[command(flatten)]
        login: Login,
    },
    /// Extend an open request to three months from receipt, once, within its first
    /// month (an officer's login).
    Extend {
        id: i64,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        login: Login,
    },
    /// Every request: received, deadline, and whether it is open, overdue or answered
    /// (its subject only as kind and tag; an officer's login).
    List {
        #[arg(long)]
        json: bool,
        /// As of this day instead of today (RFC 3339 or date).
        #[arg(long)]
        now: Option<String>,
        #[command(flatten)]
        login: Login,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["recipient", "email", "request"])))]
pub struct SubjectExportArgs {
    #[arg(long)]
    pub recipient: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    /// The subject request the export answers: its subject, and it is closed.
    #[arg(long)]
    pub request: Option<i64>,
    #[arg(long)]
    pub officer: String,
    #[arg(long)]
    pub totp: String,
    /// Why the records are read: lawful-request, subject-access, contract-end,
    /// security-incident or operations (there is none for marketing or analytics).
    #[arg(long, value_enum)]
    pub purpose: crate::compliance::purpose::Purpose,
    /// Only JSON: the machine-readable form the subject is entitled to.
    #[arg(long, value_parser = ["json"], default_value = "json")]
    pub format: String,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DiscloseArgs {
    #[arg(long)]
    pub case: i64,
    #[arg(long)]
    pub officer: String,
    #[arg(long)]
    pub totp: String,
    /// Why the records are read: lawful-request, subject-access, contract-end,
    /// security-incident or operations (there is none for marketing or analytics).
    #[arg(long, value_enum)]
    pub purpose: crate::compliance::purpose::Purpose,
    #[arg(long, value_enum, default_value = "json")]
    pub format: crate::compliance::disclosure::Format,
    /// The export file; the manifest goes beside it (`<out>.manifest.json`, `.sig`).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    pub id: i64,
    #[arg(long)]
    pub officer: String,
    /// The current code of the officer's authenticator.
    #[arg(long)]
    pub totp: String,
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the audit log, oldest first (an admin's login).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
    /// Recompute the hash chain; non-zero exit if any entry was edited or removed.
    Verify,
}

pub(super) fn officer(config: &Config, command: &OfficerCommand) -> Result<()> {
    use crate::compliance::officers::Role;
    let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
    let now = SystemClock.now_micros();
    match command {
        OfficerCommand::Add {
            name,
            role,
            login: l,
        } => {
            // The first officer is how an installation starts: an admin, who adds the
            // others, as on the API (single-operator mode lets its operator add any).
            let by = if ledger.officers()?.is_empty() && !config.compliance.single_operator {
                if *role != Role::Admin {
                    bail!("the first officer must be an admin (--role admin): it adds the others");
                }
                actor()
            } else {
                login(config, &mut ledger, l, Role::Admin, "officer.add")?
            };
            let master = crate::store::keys::MasterKey::load(&config.store.master_key)?;
            let password = read_secret_line("the new officer's password")?;
            let e = ledger.add_officer(&master, name, *role, &password, now, &by)?;
            println!(
                "officer {} added with role {}",
                e.officer.name,
                e.officer.role.as_str()
            );
            println!("TOTP enrolment (shown once; scan or type it into an authenticator app):");
            println!("{}", e.otpauth_uri);
        }
        OfficerCommand::List { login: l } => {
            login_and_audit(config, &mut ledger, l, Role::Admin, "officer.list")?;
            for o in ledger.officers()? {
                println!(
                    "{}\t{}\t{}\tadded by {} at {}",
                    o.name,
                    o.role.as_str(),
                    if o.enabled { "enabled" } else { "disabled" },
                    o.created_by,
                    rfc3339(o.created_at)
                );
            }
        }
        OfficerCommand::Disable { name, login: l } => {
            let who = login(config, &mut ledger, l, Role::Admin, "officer.disable")?;
            ledger.disable_officer(name, now, &who)?;
            println!("officer {name} disabled");
        }
        OfficerCommand::Unlock { name, login: l } => {
            let who = login(config, &mut ledger, l, Role::Admin, "officer.unlock")?;
            ledger.unlock_officer(name, now, &who)?;
            println!("officer {name} unlocked");
        }
    }
    Ok(())
}

pub(super) fn case(config: &Config, command: &CaseCommand) -> Result<()> {
    use crate::compliance::officers::{Credentials, Role};
    let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
    let now = SystemClock.now_micros();
    ledger.note_four_eyes(config.compliance.four_eyes, now, &actor())?;
    let master = || crate::store::keys::MasterKey::load(&config.store.master_key);
    match command {
        CaseCommand::Open(a) => {
            let master = master()?;
            let password = read_secret_line("password")?;
            let who = Credentials {
                name: &a.officer,
                password: &password,
                totp: None,
            };
            let officer = ledger.authenticate(
                &master,
                who,
                Role::Officer,
                now,
                "case.open",
                &local_peer(),
            )?;
            let numbers = NumberNormalizer::new(config.store.default_region);
            let cutoff = config.store.retention.cutoff(SystemClock.now());
            let new = a
                .form()
                .validate(&numbers, now, Some(cutoff.timestamp_micros()))?;
            let id = ledger.open_case(&master, &officer, &new, now)?;
            println!(
                "case {id} opened ({}); it needs an approver's approval",
                new.details.request
            );
        }
        CaseCommand::Approve(d) | CaseCommand::Reject(d) => {
            let approve = matches!(command, CaseCommand::Approve(_));
            if !approve && d.note.trim().is_empty() {
                bail!("a rejection needs --note with the reason");
            }
            let master = master()?;
            let password = read_secret_line("password")?;
            let who = Credentials {
                name: &d.officer,
                password: &password,
                totp: Some(&d.totp),
            };
            let action = if approve {
                "case.approve"
            } else {
                "case.reject"
            };
            let officer =
                ledger.authenticate(&master, who, Role::Approver, now, action, &local_peer())?;
            ledger.decide_case(
                &officer,
                d.id,
                approve,
                &d.note,
                config.compliance.four_eyes,
                now,
            )?;
            println!(
                "case {} {}",
                d.id,
                if approve { "approved" } else { "rejected" }
            );
        }
        CaseCommand::Close { id, officer } => {
            let master = master()?;
            let password = read_secret_line("password")?;
            let who = Credentials {
                name: officer,
                password: &password,
                totp: None,
            };
            let officer = ledger.authenticate(
                &master,
                who,
                Role::Officer,
                now,
                "case.close",
                &local_peer(),
            )?;
            ledger.close_case(&officer, *id, now)?;
            println!("case {id} closed");
        }
        CaseCommand::Show { id, login: l } => {
            let who = login(config, &mut ledger, l, Role::Officer, "case.show")?;
            let found = ledger.case(*id);
            ledger.audit(
                now,
                &who,
                "case.show",
                serde_json::json!({"case": id, "found": found.is_ok()}),
            )?;
            let c = found?;
            println!("case {}\t{}\t{}", c.id, c.details.request, c.state.as_str());
            println!("authority\t{}", c.details.authority);
            println!("legal basis\t{}", c.details.legal_basis);
            println!(
                "order\t{} of {}",
                c.details.order_reference, c.details.order_date
            );
            println!("deadline\t{}", c.details.deadline);
            println!("confidential\t{}", c.details.confidential);
            println!(
                "window\t{} .. {}",
                rfc3339(c.details.since),
                rfc3339(c.details.until)
            );
            for (kind, tag) in &c.criteria_tags {
                println!("identifier\t{}\t{tag}", kind.as_str());
            }
            println!("opened\tby {} at {}", c.opened_by, rfc3339(c.opened_at));
            if let (Some(by), Some(at)) = (&c.decided_by, c.decided_at) {
                println!(
                    "decided\tby {by} at {}: {}",
                    rfc3339(at),
                    c.decision_note.as_deref().unwrap_or("")
                );
            }
        }
        CaseCommand::List { login: l } => {
            login_and_audit(config, &mut ledger, l, Role::Officer, "case.list")?;
            for c in ledger.cases()? {
                println!(
                    "{}\t{}\t{}\t{}\topened by {}\tdeadline {}",
                    c.id,
                    c.details.request,
                    c.state.as_str(),
                    c.details.authority,
                    c.opened_by,
                    c.details.deadline
                );
            }
        }
    }
    Ok(())
}

/// The keys an export needs, and the officer, authenticated with password and TOTP.
struct Exporter {
    ledger: crate::ledger::Ledger,
    keys: ExportKeys,
    officer: crate::compliance::officers::Officer,
    now: i64,
}

struct ExportKeys {
    master: crate::store::keys::MasterKey,
    keyring: crate::store::keys::Keyring,
    signer: ring::signature::Ed25519KeyPair,
}

impl ExportKeys {
    fn installation<'a>(
        &'a self,
        config: &'a Config,
    ) -> crate::compliance::disclosure::Installation<'a> {
        crate::compliance::disclosure::Installation {
            store: &config.store,
            keyring: &self.keyring,
            master: &self.master,
            signer: &self.signer,
            csp_id: &config.compliance.csp_id,
        }
    }
}

impl Exporter {
    fn login(
        config: &Config,
        officer: &str,
        totp: &str,
        action: &str,
        role: crate::compliance::officers::Role,
    ) -> Result<Exporter> {
        use crate::compliance::officers::Credentials;
        let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
        let now = SystemClock.now_micros();
        let master = crate::store::keys::MasterKey::load(&config.store.master_key)?;
        let password = read_secret_line("password")?;
        let who = Credentials {
            name: officer,
            password: &password,
            totp: Some(totp),
        };
        let officer = ledger.authenticate(&master, who, role, now, action, &local_peer())?;
        Ok(Exporter {
            ledger,
            keys: ExportKeys {
                master,
                keyring: crate::store::open_keyring(&config.store)?,
                signer: crate::store::integrity::load_signing_key(&config.store.signing_key)?,
            },
            officer,
            now,
        })
    }
}

/// A data subject's number or address as given on the command line.
fn subject_of(
    config: &Config,
    recipient: Option<&str>,
    email: Option<&str>,
) -> Result<crate::compliance::cases::Criterion> {
    use crate::compliance::cases::{IdentifierKind, criterion};
    let numbers = NumberNormalizer::new(config.store.default_region);
    Ok(match (recipient, email) {
        (Some(n), _) => criterion(IdentifierKind::Recipient, n, &numbers)?,
        (_, Some(e)) => criterion(IdentifierKind::Email, e, &numbers)?,
        _ => bail!("give --recipient or --email"),
    })
}

pub(super) fn subject_request(config: &Config, command: &RequestCommand) -> Result<()> {
    use crate::compliance::officers::Role;
    use crate::compliance::requests;
    let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
    match command {
        RequestCommand::Open {
            recipient,
            email,
            received,
            login: l,
        } => {
            let subject = subject_of(config, recipient.as_deref(), email.as_deref())?;
            let received = requests::parse_date(received)?;
            let actor = login(
                config,
                &mut ledger,
                l,
                Role::Officer,
                "subject.request.open",
            )?;
            let master = crate::store::keys::MasterKey::load(&config.store.master_key)?;
            let now = SystemClock.now();
            let (id, deadline) = ledger.open_request(
                &master,
                &actor,
                &subject,
                received,
                now.date_naive(),
                now.timestamp_micros(),
            )?;
            println!("subject request {id}: received {received}, answer by {deadline}");
        }
        RequestCommand::Extend {
            id,
            reason,
            login: l,
        } => {
            let actor = login(
                config,
                &mut ledger,
                l,
                Role::Officer,
                "subject.request.extend",
            )?;
            let master = crate::store::keys::MasterKey::load(&config.store.master_key)?;
            let now = SystemClock.now();
            let deadline = ledger.extend_request(
                &master,
                &actor,
                *id,
                reason,
                now.date_naive(),
                now.timestamp_micros(),
            )?;
            println!("subject request {id}: extended, answer by {deadline}");
        }
        RequestCommand::List {
            json,
            now,
            login: l,
        } => {
            login_and_audit(
                config,
                &mut ledger,
                l,
                Role::Officer,
                "subject.request.list",
            )?;
            let today = match now {
                Some(t) => super::parse_time(t, false)?,
                None => SystemClock.now(),
            }
            .date_naive();
            let list = ledger.requests()?;
            if *json {
                let rows: Vec<serde_json::Value> = list.iter().map(|r| r.view(today)).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in &list {
                    let state = serde_json::to_value(r.state(today)).unwrap_or_default();
                    println!(
                        "{}\t{} {}\treceived {}\tdeadline {}\t{}{}",
                        r.id,
                        r.kind,
                        r.tag,
                        r.received,
                        r.deadline,
                        state.as_str().unwrap_or_default(),
                        r.answered_at
                            .as_deref()
                            .map(|a| format!(" {a}"))
                            .unwrap_or_default()
                    );
                }
                let overdue = list
                    .iter()
                    .filter(|r| r.state(today) == requests::RequestState::Overdue)
                    .count();
                println!("{} request(s), {overdue} overdue on {today}", list.len());
            }
        }
    }
    Ok(())
}

pub(super) fn subject_export(config: &Config, args: &SubjectExportArgs) -> Result<()> {
    let given = match (&args.recipient, &args.email) {
        (None, None) => None,
        (r, e) => Some(subject_of(config, r.as_deref(), e.as_deref())?),
    };
    let mut x = Exporter::login(
        config,
        &args.officer,
        &args.totp,
        "subject.export",
        crate::compliance::officers::Role::Officer,
    )?;
    let subject = match (args.request, given) {
        (Some(id), _) => x.ledger.request_subject(&x.keys.master, id)?,
        (None, Some(s)) => s,
        (None, None) => bail!("give --recipient, --email or --request"),
    };
    let inst = x.keys.installation(config);
    let d = crate::compliance::disclosure::subject_export(
        &inst,
        &mut x.ledger,
        &x.officer,
        args.purpose,
        &subject,
        args.request,
        config.store.retention,
        &args.out,
        x.now,
    )?;
    if let Some(id) = args.request {
        println!("subject request {id} answered");
    }
    println!(
        "{} records to {}\nmanifest {} (sha256 of the export {})",
        d.records,
        d.export.display(),
        d.manifest.display(),
        d.sha256
    );
    Ok(())
}

pub(super) fn offboard(
    config: &Config,
    name: &str,
    out: &std::path::Path,
    officer: &str,
    totp: &str,
    purpose: crate::compliance::purpose::Purpose,
) -> Result<()> {
    // A running serve answers clients before their rows reach the partitions: rows it
    // puts in after this erasure would outlive the deletion statement. Asked whatever
    // this configuration says: a serve answering from its journal holds it open. (On
    // PostgreSQL a node that answers from the database answers only once its rows are
    // committed: what is exported is all there.)
    let journal = config.store.path.join(crate::store::JOURNAL_DIR);
    if crate::store::journal::in_use(&journal)
        .with_context(|| format!("store journal {}", journal.display()))?
    {
        bail!(
            "relaylog serve is running on this store: offboard through its compliance API (POST /api/v1/accounts/{{name}}/offboard), which waits for what it accepted, or stop it first"
        );
    }
    let mut x = Exporter::login(
        config,
        officer,
        totp,
        "account.offboard",
        crate::compliance::officers::Role::Admin,
    )?;
    let inst = x.keys.installation(config);
    let o = crate::compliance::offboard::offboard(
        &inst,
        &mut x.ledger,
        &x.officer,
        purpose,
        name,
        crate::compliance::offboard::Out {
            dir: out,
            stem: None,
        },
        x.now,
    )?;
    println!(
        "account {name}: {} records and {} outcome events exported to {} and erased from {} partition(s)\ndeletion statement {}",
        o.records,
        o.outcomes,
        o.export.display(),
        o.partitions.len(),
        o.statement.display()
    );
    Ok(())
}

pub(super) fn disclose(config: &Config, args: &DiscloseArgs) -> Result<()> {
    let mut x = Exporter::login(
        config,
        &args.officer,
        &args.totp,
        "case.disclose",
        crate::compliance::officers::Role::Officer,
    )?;
    let inst = x.keys.installation(config);
    let d = crate::compliance::disclosure::disclose(
        &inst,
        &mut x.ledger,
        &x.officer,
        args.purpose,
        args.case,
        args.format,
        &args.out,
        x.now,
    )?;
    println!(
        "case {}: {} records to {}\nmanifest {} (sha256 of the export {})",
        args.case,
        d.records,
        d.export.display(),
        d.manifest.display(),
        d.sha256
    );
    Ok(())
}

pub(super) fn verify_export(
    manifest: &std::path::Path,
    public_key: &std::path::Path,
) -> Result<()> {
    let key = crate::store::integrity::read_public_key(public_key)?;
    let m = crate::compliance::disclosure::verify_export(manifest, &key)?;
    print_verified(&m, None);
    Ok(())
}

/// [`verify_export`] with this installation's keys: its own signing key's and, on
/// PostgreSQL, every other node's whose row the master key authenticates (an export
/// is signed by the node its officer ran it on; a key put in the database by anyone
/// else is never tried).
pub(super) fn verify_export_installed(config: &Config, manifest: &std::path::Path) -> Result<()> {
    use crate::compliance::disclosure::{VerifyError, verify_export};
    let own = crate::store::integrity::public_key_path(&config.store.signing_key);
    let own = crate::store::integrity::read_public_key(&own)?;
    let first = match verify_export(manifest, &own) {
        Ok(m) => {
            print_verified(&m, None);
            return Ok(());
        }
        Err(e @ VerifyError::Signature) => e,
        Err(e) => return Err(e.into()),
    };
    let crate::config::Backend::Postgres(pg) = &config.store.backend else {
        return Err(first.into());
    };
    let master = crate::store::keys::MasterKey::load(&config.store.master_key)
        .context("the other nodes' keys are trusted only with the master key")?;
    let tagger = master.node_tagger();
    let pool = crate::pg::Pool::shared(pg)?;
    let nodes = crate::pg::schema::nodes(&mut *pool.get()?)?;
    for node in nodes
        .iter()
        .filter(|n| n.authentic(&tagger) && n.public_key != own)
    {
        match verify_export(manifest, &node.public_key) {
            Ok(m) => {
                print_verified(&m, Some(&node.name));
                return Ok(());
            }
            Err(VerifyError::Signature) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(first.into())
}

fn print_verified(m: &crate::compliance::disclosure::Manifest, node: Option<&str>) {
    let by = node
        .map(|n| format!(", signed by node `{n}`"))
        .unwrap_or_default();
    println!(
        "export verified: case {} ({}), {} records, sha256 {}{by}",
        m.case, m.request, m.records, m.export_sha256
    );
}

pub(super) fn audit(config: &Config, command: &AuditCommand) -> Result<()> {
    let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
    match command {
        AuditCommand::List { json, login: l } => {
            use crate::compliance::officers::Role;
            login_and_audit(config, &mut ledger, l, Role::Admin, "audit.list")?;
            // Every refusal so far, this minute's too, is in the log that is read.
            ledger.flush_refusals(SystemClock.now_micros(), true)?;
            for e in ledger.entries()? {
                if *json {
                    let details: serde_json::Value =
                        serde_json::from_str(&e.details).unwrap_or(serde_json::Value::Null);
                    println!(
                        "{}",
                        serde_json::json!({"seq": e.seq, "at": rfc3339(e.at), "actor": e.actor, "action": e.action, "details": details})
                    );
                } else {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        e.seq,
                        rfc3339(e.at),
                        e.actor,
                        e.action,
                        e.details
                    );
                }
            }
        }
        AuditCommand::Verify => {
            let n = ledger.verify_audit()?;
            println!("audit log intact: {n} entries");
        }
    }
    Ok(())
}

pub(super) fn report_retention(
    config: &Config,
    json: bool,
    out: Option<&std::path::Path>,
) -> Result<()> {
    let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
    // On SQLite only the public key is needed; on PostgreSQL the master key decides
    // which nodes' keys are trusted.
    let keyring = match crate::store::open_keyring(&config.store) {
        Ok(k) => Some(k),
        Err(e) if matches!(config.store.backend, crate::config::Backend::Postgres(_)) => {
            return Err(anyhow::Error::new(e)
                .context("on PostgreSQL the nodes' keys are trusted only with the master key"));
        }
        Err(e @ keys::KeyError::DirectoryWritable { .. }) => return Err(e.into()),
        Err(_) => None,
    };
    let now = SystemClock.now();
    let report =
        crate::compliance::retention::report(&config.store, &ledger, keyring.as_ref(), now)?;
    ledger.audit(
        now.timestamp_micros(),
        &actor(),
        "report.retention",
        serde_json::json!({
            "certificates": report.certificates.len(),
            "problems": report.problems.len(),
        }),
    )?;
    match (json, out) {
        (_, Some(file)) => {
            let key = crate::store::integrity::load_signing_key(&config.store.signing_key)
                .context("the report is signed with the installation's signing key")?;
            let (bytes, signature) = report.signed(&key);
            let sig = crate::compliance::disclosure::signature_path(file);
            crate::compliance::disclosure::write_new(file, &bytes)?;
            if let Err(e) = crate::compliance::disclosure::write_new(&sig, signature.as_bytes()) {
                let _ = std::fs::remove_file(file);
                return Err(e.into());
            }
            println!(
                "retention report written to {} and signed ({}); check it with `relaylog verify-retention {} --public-key signing.key.pub`",
                file.display(),
                sig.display(),
                file.display()
            );
        }
        (true, None) => println!("{}", serde_json::to_string_pretty(&report)?),
        (false, None) => print!("{}", report.to_text()),
    }
    Ok(())
}

/// Checks a retention report's certificates with public keys alone.
pub(super) fn verify_retention(
    report: &std::path::Path,
    public_keys: &[std::path::PathBuf],
) -> Result<()> {
    use crate::compliance::retention;
    let bytes =
        std::fs::read(report).with_context(|| format!("cannot read {}", report.display()))?;
    let sig = crate::compliance::disclosure::signature_path(report);
    let signature = std::fs::read_to_string(&sig)
        .with_context(|| format!("cannot read the report's signature {}", sig.display()))?;
    let keys = retention::read_keys(public_keys)?;
    let check = retention::check_report(&bytes, &signature, &keys)?;
    let r = &check.report;
    println!(
        "report of {} (retention {}): oldest record held {}",
        r.generated_at,
        r.retention,
        r.oldest_record.as_deref().unwrap_or("none")
    );
    for c in &r.restored_copies {
        let state = if c.finished {
            "restored"
        } else {
            "restore begun, not finished"
        };
        println!(
            "note: backup {} {state} into {} on {} (a copy this store's expiry does not reach)",
            c.backup, c.into, c.at
        );
    }
    for f in &check.failures {
        println!("FAILED  {f}");
    }
    println!(
        "report signature ok; {} deletion certificate(s) checked; {} failure(s)",
        check.certificates,
        check.failures.len()
    );
    if !check.failures.is_empty() {
        bail!(
            "the report does not show retention kept: {} failure(s)",
            check.failures.len()
        );
    }
    Ok(())
}
