//! `relaylog serve`: opens the store, binds every listener (starting the built-in
//! simulator for listeners without an upstream), and shuts down in order: stop
//! accepting, let in-flight requests finish, commit the last batch, stop.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::AdminServer;
use crate::canonical::NumberNormalizer;
use crate::clock::SharedClock;
use crate::config::{Config, ListenerProtocol, SmtpTarget};
use crate::egress::http::Upstream;
use crate::egress::smtp::SmtpUpstream;
use crate::ingress::http::{HttpThreads, Listener};
use crate::ingress::smtp::{SmtpListener, SmtpServer};
use crate::ingress::tls::{self, TlsError};
use crate::metrics::Metrics;
use crate::net::{Connections, Live};
use crate::record::{Protocol, Service};
use crate::relay::Relay;
use crate::reload::{Contexts, Reloadable, Reloader};
use crate::shutdown::{self, DrainWaiter, Trigger};
use crate::simulator::smtp::{SinkStats, SmtpSink};
use crate::simulator::{Simulator, Stats};
use crate::store::{OpenError, Store};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("listener `{listener}`: cannot listen on {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener `{listener}`: {source}")]
    Tls { listener: String, source: TlsError },
    #[error("listener `{listener}`: cannot start its threads: {source}")]
    Threads {
        listener: String,
        source: std::io::Error,
    },
    #[error("admin: {0}")]
    AdminTls(TlsError),
    #[error("admin: compliance API: {0}")]
    Api(#[from] crate::admin::api::ApiSetupError),
    #[error("admin: cannot listen on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the compaction thread: {0}")]
    Compactor(std::io::Error),
}

/// The longest wait between compaction runs (a larger `expire-interval` is as good).
const YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// How long shutdown waits for all the HTTP listeners' threads once their connections
/// are done (they then only end their runtimes, at most a second each).
const HTTP_THREADS_JOIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How long shutdown waits for the compaction thread once the requests are done.
const COMPACTOR_JOIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Compaction of the partitions whose period is over (see `store::compact`), on a
/// thread of its own at low priority: at start-up, then every `store.expire-interval`.
struct Compactor {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Dropped to stop the thread's wait between runs.
    wake: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Compactor {
    fn spawn(store: Arc<Store>, interval: std::time::Duration) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, rx) = std::sync::mpsc::channel::<()>();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("relaylog-compact".into())
            .spawn(move || {
                crate::store::compact::lower_priority();
                loop {
                    for (p, result) in store.compact_due(&|| flag.load(Ordering::Relaxed)) {
                        match result {
                            Ok(c) => tracing::info!(
                                partition = %p,
                                records = c.records,
                                seconds = c.seconds,
                                "partition compacted"
                            ),
                            Err(e) => tracing::error!(
                                partition = %p,
                                error = %e,
                                "compaction failed; tried again at the next interval"
                            ),
                        }
                    }
                    // Between runs, the keys compaction (or anyone) read leave
                    // memory once their time to live is over, whether or not
                    // anything reads again.
                    let next = std::time::Instant::now()
                        .checked_add(interval)
                        .unwrap_or_else(|| std::time::Instant::now() + YEAR);
                    loop {
                        let step = next
                            .saturating_duration_since(std::time::Instant::now())
                            .min(crate::store::keys::KEY_TTL);
                        match rx.recv_timeout(step) {
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        store.forget_stale_keys();
                        if std::time::Instant::now() >= next {
                            break;
                        }
                    }
                }
            })?;
        Ok(Self { stop, wake, thread })
    }

    /// Tells it to stop at its next step (a page of 2,048 rows, or one statement over
    /// a partition: counting or sorting one kind of its tags, seconds for tens of
    /// millions); [`Self::join`] waits for it.
    fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for the thread, at most `limit`: a statement still running past it is
    /// left to the process's exit, as a crash would (a compaction cut short is done
    /// afresh next time).
    async fn join(self, limit: std::time::Duration) {
        self.stop();
        drop(self.wake);
        // Polled rather than joined on a blocking thread: the runtime's end would wait
        // for that thread however long the statement it waits on takes.
        let began = std::time::Instant::now();
        while !self.thread.is_finished() {
            if began.elapsed() >= limit {
                tracing::warn!(
                    ?limit,
                    "compaction did not stop in time; left to the exit, and done afresh next time"
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if self.thread.join().is_err() {
            tracing::error!("the compaction thread panicked");
        }
    }
}

/// Where a listener forwards: an HTTP gateway, a mail server or an SMSC.
enum Target {
    Http(http::Uri),
    Smtp(SmtpTarget),
    Smpp(crate::config::SmppTarget),
}

/// Which built-in simulator a listener without an upstream gets.
enum Simulated {
    /// The gateway look-alike for an HTTP profile.
    Gateway(crate::config::Profile),
    /// The sink MTA.
    Mta,
    /// The SMSC simulator.
    Smsc,
}

/// Starts the built-in simulator for a listener without an upstream.
async fn start_simulator(
    l: &crate::config::ListenerConfig,
    simulated: Simulated,
    shutdown: &crate::shutdown::Shutdown,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(SocketAddr, StartedSimulator), ServeError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let bind_err = |source| ServeError::Bind {
        listener: l.name.clone(),
        addr: loopback,
        source,
    };
    let (addr, stats) = match simulated {
        Simulated::Gateway(profile) => {
            let kind = profile.kind;
            let sim = Simulator::bind(loopback, profile).await.map_err(bind_err)?;
            let addr = sim.local_addr().map_err(bind_err)?;
            tracing::info!(
                listener = %l.name,
                simulator = %addr,
                "no upstream configured: forwarding to the built-in {} gateway simulator at http://{addr} (GET /stats for its counts)",
                kind.as_str()
            );
            let stats = SimulatorStats::Http(sim.stats.clone());
            tasks.push(tokio::spawn(sim.run(shutdown.clone())));
            (addr, stats)
        }
        Simulated::Smsc => {
            let smsc = crate::simulator::smpp::Smsc::bind(loopback, SIMULATOR_RECEIPT_DELAY)
                .await
                .map_err(bind_err)?;
            let addr = smsc.local_addr().map_err(bind_err)?;
            tracing::info!(
                listener = %l.name,
                simulator = %addr,
                "no upstream configured: relaying to the built-in SMSC simulator at smpp://{addr}"
            );
            let stats = SimulatorStats::Smpp(smsc.stats.clone());
            tasks.push(tokio::spawn(smsc.run(shutdown.clone())));
            (addr, stats)
        }
        Simulated::Mta => {
            let sink = SmtpSink::bind(loopback).await.map_err(bind_err)?;
            let addr = sink.local_addr().map_err(bind_err)?;
            tracing::info!(
                listener = %l.name,
                simulator = %addr,
                "no upstream configured: relaying to the built-in sink MTA at smtp://{addr}, which discards every message"
            );
            let stats = SimulatorStats::Smtp(sink.stats.clone());
            tasks.push(tokio::spawn(sink.run(shutdown.clone())));
            (addr, stats)
        }
    };
    Ok((
        addr,
        StartedSimulator {
            listener: l.name.clone(),
            addr,
            stats,
        },
    ))
}

/// A started simulator's counts.
pub enum SimulatorStats {
    Http(Arc<Stats>),
    Smtp(Arc<SinkStats>),
    Smpp(Arc<crate::simulator::smpp::SmscStats>),
}

/// How long after a submit the built-in SMSC simulator sends its delivery receipt.
const SIMULATOR_RECEIPT_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// A built-in simulator started because a listener has no upstream.
pub struct StartedSimulator {
    pub listener: String,
    pub addr: SocketAddr,
    pub stats: SimulatorStats,
}

/// How a shutdown went, beyond what it logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Every HTTP listener's threads ended (within 5 s of the drain).
    pub http_threads_ended: bool,
}

/// How long requests cut short at `shutdown-timeout` get to write their outcomes: more
/// than a record's worst case (key file, queue and commit timeouts).
const ABANDON_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

pub struct Running {
    /// (listener name, bound address), in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: Option<SocketAddr>,
    pub simulators: Vec<StartedSimulator>,
    pub metrics: Arc<Metrics>,
    trigger: Trigger,
    /// Fired when `shutdown-timeout` has passed with requests still in flight.
    abort_trigger: Trigger,
    shutdown_timeout: std::time::Duration,
    simulator_trigger: Trigger,
    drain: DrainWaiter,
    tasks: Vec<JoinHandle<()>>,
    /// The HTTP listeners' threads (see [`HttpThreads`]).
    http_threads: Vec<HttpThreads>,
    store: Arc<Store>,
    compactor: Compactor,
    reloader: std::sync::Mutex<Reloader>,
}

pub async fn start(config: Config, clock: SharedClock) -> Result<Running, ServeError> {
    let (trigger, shutdown) = shutdown::channel();
    let (abort_trigger, abort) = shutdown::channel();
    let (simulator_trigger, simulator_shutdown) = shutdown::channel();
    let mut tasks = Vec::new();
    // Simulators first, so that saying so is the first thing serve logs.
    let mut simulators = Vec::new();
    let mut upstreams = Vec::new();
    for l in &config.listeners {
        let upstream = match &l.protocol {
            ListenerProtocol::Http { profile, forward } => match &forward.upstream {
                Some(uri) => Target::Http(uri.clone()),
                None => {
                    let (addr, sim) = start_simulator(
                        l,
                        Simulated::Gateway((**profile).clone()),
                        &simulator_shutdown,
                        &mut tasks,
                    )
                    .await?;
                    simulators.push(sim);
                    Target::Http(format!("http://{addr}").parse().map_err(|_| {
                        ServeError::Bind {
                            listener: l.name.clone(),
                            addr,
                            source: std::io::Error::other("simulator address is not a URI"),
                        }
                    })?)
                }
            },
            ListenerProtocol::Smtp(smtp) => match &smtp.upstream {
                Some(target) => Target::Smtp(target.clone()),
                None => {
                    let (addr, sim) =
                        start_simulator(l, Simulated::Mta, &simulator_shutdown, &mut tasks).await?;
                    simulators.push(sim);
                    Target::Smtp(SmtpTarget {
                        host: addr.ip().to_string(),
                        port: addr.port(),
                        implicit_tls: false,
                    })
                }
            },
            ListenerProtocol::Smpp(smpp) => match &smpp.upstream {
                Some(target) => Target::Smpp(target.clone()),
                None => {
                    let (addr, sim) =
                        start_simulator(l, Simulated::Smsc, &simulator_shutdown, &mut tasks)
                            .await?;
                    simulators.push(sim);
                    Target::Smpp(crate::config::SmppTarget {
                        host: addr.ip().to_string(),
                        port: addr.port(),
                        tls: false,
                    })
                }
            },
        };
        upstreams.push(upstream);
    }

    // Each message in flight holds two places in the writer's queue (its records, and
    // the one kept for its outcome): fewer places than that fails messages closed while
    // the writer idles.
    let in_flight: usize = config
        .listeners
        .iter()
        .map(|l| l.limits.max_connections)
        .sum();
    if config.store.queue_capacity < 2 * in_flight {
        tracing::warn!(
            queue_capacity = config.store.queue_capacity,
            max_connections = in_flight,
            "store.queue-capacity is below twice the listeners' max-connections: busy forwards can fill the queue and fail messages closed"
        );
    }
    let metrics = Arc::new(Metrics::new());
    // Off the runtime's threads: opening the store and expiring it are blocking work
    // (files, or the PostgreSQL client, whose calls must not run on a runtime thread).
    let store = {
        let (cfg, clock, metrics) = (config.store.clone(), clock.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || Store::open(cfg, clock, metrics))
            .await
            .map_err(|e| OpenError::Thread(std::io::Error::other(e)))??
    };
    // Expiry at start-up, then every expire-interval.
    let store = Arc::new(store);
    {
        let (store, config, clock) = (store.clone(), config.clone(), clock.clone());
        // A panic in it is the task's; the store stays usable, as when it fails.
        let _ =
            tokio::task::spawn_blocking(move || run_expiry(&store, &config, clock.as_ref())).await;
    }
    {
        let (store, clock, mut shutdown) = (store.clone(), clock.clone(), shutdown.clone());
        let interval = config.store.expire_interval;
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(interval) => {
                        // What the journal holds goes in first: expiry then deletes
                        // it with its partition. Expiry runs even when some of it
                        // could not go in (a partition that keeps failing must not
                        // keep everything else past retention): rows of a partition
                        // it removes are dropped, not written back, by the writer.
                        if let Err(e) = store.recorder().barrier().await {
                            tracing::warn!(error = %e, "not everything queued is in the partitions before expiry");
                        }
                        let (store, clock, config) = (store.clone(), clock.clone(), config.clone());
                        let _ = tokio::task::spawn_blocking(move || run_expiry(&store, &config, clock.as_ref())).await;
                    }
                }
            }
        }));
    }
    let normalizer = NumberNormalizer::warmed(config.store.default_region);
    let (drain, drain_waiter) = shutdown::drain();
    let mut bound = Vec::new();
    let mut http_threads = Vec::new();
    let mut reloadable = Vec::new();
    for (l, upstream) in config.listeners.iter().zip(upstreams) {
        let listener = TcpListener::bind(l.listen)
            .await
            .map_err(|source| ServeError::Bind {
                listener: l.name.clone(),
                addr: l.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            listener: l.name.clone(),
            addr: l.listen,
            source,
        })?;
        let tls_err = |source| ServeError::Tls {
            listener: l.name.clone(),
            source,
        };
        let (protocol, service, cut_short) = match &l.protocol {
            ListenerProtocol::Http { .. } => (Protocol::Http, Service::Sms, 503),
            ListenerProtocol::Smtp(_) => (Protocol::Smtp, Service::Email, 421),
            ListenerProtocol::Smpp(_) => (Protocol::Smpp, Service::Sms, 0x58),
        };
        let core = Arc::new(Relay::new(
            l.name.clone(),
            protocol,
            service,
            store.recorder(),
            normalizer.clone(),
            metrics.clone(),
            Arc::new(abort.clone()),
            cut_short,
        ));
        let certificate = match &l.tls {
            Some(files) => Some(tls::Certificate::load(&files.cert, &files.key).map_err(tls_err)?),
            None => None,
        };
        let connections = Connections::new(
            l.limits.max_connections,
            l.limits.max_connections_per_peer,
            l.limits.header_timeout,
        );
        let contexts = match (&l.protocol, upstream) {
            (ListenerProtocol::Http { profile, forward }, Target::Http(uri)) => {
                let tls = match &certificate {
                    Some(c) => Some(TlsAcceptor::from(
                        tls::with_certificate(c, &[b"http/1.1"]).map_err(tls_err)?,
                    )),
                    None => None,
                };
                // A listener (and so an upstream pool) per thread: a connection
                // belongs to the runtime that made it. The idle connections the
                // listener may keep are shared out among its threads (rounded up).
                let threads = config.serve.http_threads.max(1);
                let forward = crate::config::Forward {
                    pool_idle: forward.pool_idle.div_ceil(threads),
                    ..forward.clone()
                };
                let upstream = Upstream::new(uri.clone(), &forward).map_err(tls_err)?;
                let relays: Vec<_> = (0..threads)
                    .map(|_| {
                        Live::new(Arc::new(Listener {
                            relay: core.clone(),
                            profile: (**profile).clone(),
                            limits: l.limits,
                            upstream: Arc::new(upstream.with_own_pool()),
                        }))
                    })
                    .collect();
                tracing::info!(
                    listener = %l.name,
                    addr = %addr,
                    profile = profile.kind.as_str(),
                    tls = tls.is_some(),
                    upstream = %uri,
                    threads = relays.len(),
                    "listening"
                );
                let thread_err = |source| ServeError::Threads {
                    listener: l.name.clone(),
                    source,
                };
                let socket = listener.into_std().map_err(thread_err)?;
                http_threads.push(
                    HttpThreads::spawn(
                        socket,
                        relays.clone(),
                        connections.clone(),
                        tls,
                        &shutdown,
                        &drain,
                    )
                    .map_err(thread_err)?,
                );
                Contexts::Http(relays)
            }
            (ListenerProtocol::Smtp(smtp), Target::Smtp(target)) => {
                let tls = match &certificate {
                    Some(c) => Some(TlsAcceptor::from(
                        tls::with_certificate(c, &[]).map_err(tls_err)?,
                    )),
                    None => None,
                };
                let upstream = SmtpUpstream::new(target, smtp).map_err(tls_err)?;
                tracing::info!(
                    listener = %l.name,
                    addr = %addr,
                    protocol = "smtp",
                    tls = if smtp.implicit_tls { "implicit" } else if tls.is_some() { "starttls" } else { "none" },
                    upstream = %upstream.target(),
                    xclient = smtp.xclient,
                    "listening"
                );
                if smtp.upstream.is_some() && !smtp.xclient {
                    tracing::warn!(
                        listener = %l.name,
                        "xclient = false: the upstream sees relaylog's address, not the client's, so its client restrictions (and permit_mynetworks) apply to relaylog; set xclient = true for Postfix"
                    );
                }
                let target = upstream.target();
                let loopback = target.host == "localhost"
                    || target
                        .host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback && !target.implicit_tls && !smtp.upstream_starttls {
                    tracing::warn!(
                        listener = %l.name,
                        "the upstream is not on this host and not reached over TLS: clients' AUTH passwords and mail cross the network in the clear; set upstream-starttls = true or an smtps:// upstream"
                    );
                }
                let (implicit_tls, starttls) = if smtp.implicit_tls {
                    (tls, None)
                } else {
                    (None, tls)
                };
                let live = Live::new(Arc::new(SmtpListener {
                    relay: core,
                    settings: smtp.clone(),
                    starttls,
                    upstream: Arc::new(upstream),
                    handshake_timeout: l.limits.header_timeout,
                }));
                let server = SmtpServer {
                    listener,
                    smtp: live.clone(),
                    connections: connections.clone(),
                    implicit_tls,
                };
                tasks.push(tokio::spawn(server.run(shutdown.clone(), drain.clone())));
                Contexts::Smtp(live)
            }
            (ListenerProtocol::Smpp(smpp), Target::Smpp(target)) => {
                let tls = match &certificate {
                    Some(c) => Some(TlsAcceptor::from(
                        tls::with_certificate(c, &[]).map_err(tls_err)?,
                    )),
                    None => None,
                };
                let upstream =
                    crate::egress::smpp::SmppUpstream::new(target, smpp).map_err(tls_err)?;
                tracing::info!(
                    listener = %l.name,
                    addr = %addr,
                    protocol = "smpp",
                    tls = if tls.is_some() { "implicit" } else { "none" },
                    upstream = %upstream.target(),
                    window = smpp.window,
                    "listening"
                );
                let live = Live::new(Arc::new(crate::ingress::smpp::SmppListener {
                    relay: core,
                    book: Arc::new(crate::ingress::smpp::receipts::ReceiptBook::new(
                        smpp.receipt_wait,
                        smpp.receipt_book,
                        smpp.upstream_timeout,
                    )),
                    settings: smpp.clone(),
                    metrics: Arc::new(crate::ingress::smpp::SmppMetrics::new(&metrics, &l.name)),
                    upstream: Arc::new(upstream),
                    accounts: Default::default(),
                }));
                let server = crate::ingress::smpp::SmppServer {
                    listener,
                    smpp: live.clone(),
                    tls,
                    connections: connections.clone(),
                };
                tasks.push(tokio::spawn(server.run(shutdown.clone(), drain.clone())));
                Contexts::Smpp(live)
            }
            _ => unreachable!("each listener's upstream is made for its protocol above"),
        };
        reloadable.push(Reloadable {
            connections,
            certificate,
            contexts,
        });
        bound.push((l.name.clone(), addr));
    }
    drop(drain);

    let mut admin_certificate = None;
    let admin = match &config.admin {
        Some(a) => {
            let listener =
                TcpListener::bind(a.listen)
                    .await
                    .map_err(|source| ServeError::AdminBind {
                        addr: a.listen,
                        source,
                    })?;
            let addr = listener
                .local_addr()
                .map_err(|source| ServeError::AdminBind {
                    addr: a.listen,
                    source,
                })?;
            let api = match &a.tls {
                Some(files) => {
                    let certificate = tls::Certificate::load(&files.cert, &files.key)
                        .map_err(ServeError::AdminTls)?;
                    let tls = tls::with_certificate(&certificate, &[b"http/1.1"])
                        .map_err(ServeError::AdminTls)?;
                    admin_certificate = Some(certificate);
                    let api = crate::admin::api::Api::new(
                        config.clone(),
                        clock.clone(),
                        Some(store.recorder()),
                    )?;
                    Some((TlsAcceptor::from(tls), api))
                }
                None => None,
            };
            let console = api.as_ref().map(|(_, api)| {
                let store = config.store.clone();
                let traffic = crate::admin::console::traffic::Traffic::new(
                    metrics.clone(),
                    clock.clone(),
                    Box::new(move || crate::ledger::Ledger::open_store(&store)),
                );
                tasks.push(tokio::spawn(traffic.clone().run(shutdown.clone())));
                Arc::new(crate::admin::console::Console {
                    api: api.clone(),
                    traffic,
                    listeners: config
                        .listeners
                        .iter()
                        .map(|l| (l.name.clone(), l.protocol.name()))
                        .collect(),
                })
            });
            // Counted once before serve is up, so that /metrics has it from the start.
            count_overdue(&config, clock.as_ref(), &metrics).await;
            tasks.push(spawn_overdue_count(
                &config,
                clock.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
            if api.is_some() {
                tasks.push(spawn_refusal_flush(
                    &config,
                    clock.clone(),
                    shutdown.clone(),
                ));
                tracing::info!(addr = %addr, "admin listening over TLS (/metrics, /healthz, compliance API under /api/v1, console under /console/)");
            } else {
                tracing::info!(addr = %addr, "admin listening (/metrics, /healthz; no TLS, so no compliance API)");
            }
            let server = AdminServer {
                listener,
                metrics: metrics.clone(),
                recorder: store.recorder(),
                api,
                console,
            };
            tasks.push(tokio::spawn(server.run(shutdown.clone())));
            Some(addr)
        }
        None => None,
    };

    // Last, once nothing else can fail: the thread holds the store.
    let compactor = Compactor::spawn(store.clone(), config.store.expire_interval)
        .map_err(ServeError::Compactor)?;
    let reloader = std::sync::Mutex::new(Reloader {
        config: config.clone(),
        listeners: reloadable,
        admin_certificate,
        metrics: metrics.clone(),
    });
    Ok(Running {
        reloader,
        listeners: bound,
        admin,
        simulators,
        metrics,
        trigger,
        abort_trigger,
        shutdown_timeout: config.serve.shutdown_timeout,
        simulator_trigger,
        drain: drain_waiter,
        tasks,
        http_threads,
        store,
        compactor,
    })
}

/// Every minute, the refused logins and unauthenticated calls of the minutes before
/// go into the audit log, one entry per peer and minute (`compliance::refusals`), even
/// when nothing else writes to the ledger.
fn spawn_refusal_flush(
    config: &Config,
    clock: SharedClock,
    shutdown: shutdown::Shutdown,
) -> tokio::task::JoinHandle<()> {
    let ledger = config.store.clone();
    every_minute(shutdown, move || {
        let (ledger, now) = (ledger.clone(), clock.now_micros());
        async move {
            let flushed = tokio::task::spawn_blocking(move || {
                crate::ledger::Ledger::open_store(&ledger)?.flush_refusals(now, false)
            })
            .await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "refused logins not written to the audit log yet; tried again in a minute");
            }
        }
    })
}

/// Runs `tick` a minute after start-up and every minute after, until shutdown.
fn every_minute<F, Fut>(
    mut shutdown: shutdown::Shutdown,
    mut tick: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => tick().await,
            }
        }
    })
}

/// How many data subjects' requests are open past their deadline, into `/metrics` (a
/// count only).
async fn count_overdue(config: &Config, clock: &dyn crate::clock::Clock, metrics: &Metrics) {
    let (ledger, today) = (config.store.clone(), clock.now().date_naive());
    let counted = tokio::task::spawn_blocking(move || {
        crate::ledger::Ledger::open_store(&ledger)
            .map_err(crate::compliance::requests::RequestError::from)?
            .overdue_requests(today)
    })
    .await;
    match counted {
        Ok(Ok(n)) => {
            metrics
                .subject_requests_overdue
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "overdue subject requests not counted; tried again in a minute")
        }
        Err(e) => tracing::error!(error = %e, "counting overdue subject requests failed"),
    }
}

/// Every minute after start-up, [`count_overdue`].
fn spawn_overdue_count(
    config: &Config,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    shutdown: shutdown::Shutdown,
) -> tokio::task::JoinHandle<()> {
    let config = Arc::new(config.clone());
    every_minute(shutdown, move || {
        let (config, clock, metrics) = (config.clone(), clock.clone(), metrics.clone());
        async move { count_overdue(&config, clock.as_ref(), &metrics).await }
    })
}

/// Runs expiry, logging (not failing) on error: a failed run is retried next interval.
fn run_expiry(store: &Store, config: &Config, clock: &dyn crate::clock::Clock) {
    // API exports are copies of traffic data: they go after admin.exports-keep.
    match crate::admin::api::expire_exports(config, clock.now_micros()) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(removed = removed.len(), "old exports deleted");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = ?e, "deleting old exports failed; retried at the next interval")
        }
    }
    // The same periodic task makes tomorrow's keys, off the request path.
    if let Err(e) = store.prepare_keys(clock.now()) {
        tracing::error!(error = %e, "cannot create the next partition's keys; the first message of the day will");
    }
    // Backups past backup.retention: their keys go, and with them every copy.
    match crate::ledger::Ledger::open_store(&config.store)
        .and_then(|mut l| l.shred_backups(config.backup.retention, clock.now(), "serve"))
    {
        Ok(ids) if !ids.is_empty() => tracing::info!(backups = ids.len(), "backup keys shredded"),
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "shredding expired backups' keys failed; retried at the next interval")
        }
    }
    match store.expire("serve", clock.now()) {
        Ok(plan) if !plan.expire.is_empty() || !plan.held.is_empty() => {
            tracing::info!(
                removed = plan.expire.len(),
                held = plan.held.len(),
                "expiry done"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "expiry failed; retried at the next interval"),
    }
}

impl Running {
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
    }

    /// Reads the listeners' certificates again and applies `fresh`'s listener limits to
    /// new connections (see [`crate::reload`]); closes no connection. What could not
    /// be done, each in a sentence (the old kept for it); empty when all was.
    pub fn reload(&self, fresh: Result<Config, crate::config::ConfigError>) -> Vec<String> {
        self.reloader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .reload(fresh)
    }

    /// Waits until everything queued so far (records and outcome events) is committed.
    pub async fn settle(&self) -> Result<(), crate::store::RecordError> {
        self.store.recorder().barrier().await
    }

    /// Stops accepting, lets in-flight requests finish for up to `shutdown-timeout`,
    /// then cuts short what is left (each recorded message still gets its outcome,
    /// `failed: shutdown`), commits the last batch.
    pub async fn shutdown(self) -> Stopped {
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        self.trigger.trigger();
        // Stops beside the drain; waited for once the requests are done.
        self.compactor.stop();
        let mut drain = std::pin::pin!(self.drain.wait());
        if tokio::time::timeout(self.shutdown_timeout, drain.as_mut())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout = ?self.shutdown_timeout,
                "shutdown-timeout passed: cutting short what is in flight, recorded as failed: shutdown"
            );
            self.abort_trigger.trigger();
            // What is left now only finishes its record (bounded by the key, queue and
            // commit timeouts) and queues its outcome in the place kept for it.
            if tokio::time::timeout(ABANDON_AFTER, drain).await.is_err() {
                tracing::error!(
                    after = ?ABANDON_AFTER,
                    "requests still in flight after the abort; closing the store without them"
                );
            }
        }
        let deadline = std::time::Instant::now() + HTTP_THREADS_JOIN;
        let mut http_threads_ended = true;
        for threads in self.http_threads {
            http_threads_ended &= threads.join(deadline).await;
        }
        if !http_threads_ended {
            tracing::error!(
                "HTTP listener threads still running at the store's close: outcomes of requests on them may be missing"
            );
        }
        self.compactor.join(COMPACTOR_JOIN).await;
        self.store.close().await;
        self.simulator_trigger.trigger();
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!("stopped; last batch committed");
        Stopped { http_threads_ended }
    }
}
