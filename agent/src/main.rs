use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jiff::Timestamp;
use recast_agent::collect::{self, CommandRunner, Identity, Probe, ReplayRunner, SystemRunner};
use recast_agent::enroll::AgentConfig;
use recast_agent::exec::{Exec, ToolExec};
use recast_agent::send::{SendOutcome, Sender};
use recast_agent::simulate::{self, Scenario, SimulateOptions};
use recast_agent::{hold, restart, state};
use recast_crds::report::{
    AgentReport, DesiredUpdateHold, NetworkRestartOrder, NetworkRestartResult,
};

/// recast-agent: runs on each endpoint and reports its build, update results, servicing state
/// and crashes to the recast gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Source {
    /// Read tool outputs from files in DIR instead of running wevtutil, reg, fsutil and cmd,
    /// and answer bcdedit and shutdown from DIR too, logging them to DIR/calls.log (file names
    /// in agent/README.md).
    #[arg(long, value_name = "DIR")]
    replay: Option<PathBuf>,
    /// The Endpoint object's name, as declared to recast. Optional with --agent-config: a
    /// reimaged machine's agent.json names it (one golden image serves many machines, so the
    /// service's command line carries nothing per machine); given as well, the two must agree.
    #[arg(long, env = "RECAST_ENDPOINT")]
    endpoint: Option<String>,
    /// File holding the attempt id, written by the reimage flow into a freshly applied image.
    #[arg(long, value_name = "FILE")]
    attempt_file: Option<PathBuf>,
    /// Report interval, such as 5m.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    interval: Duration,
}

#[derive(Subcommand)]
enum Cmd {
    /// Collect one report and print it as JSON (nothing is sent).
    Collect {
        #[command(flatten)]
        source: Source,
    },
    /// Report to the gateway every interval (plus random jitter) until stopped.
    Run {
        #[command(flatten)]
        source: Source,
        /// Gateway base URL, such as https://recast.example:8443. Optional with --agent-config:
        /// agent.json carries the gateway the reimage named; given, this wins.
        #[arg(long, env = "RECAST_GATEWAY")]
        gateway: Option<String>,
        /// File holding this endpoint's bearer token (never passed on the command line, where
        /// other users could read it). With --agent-config and no token yet, the agent
        /// enrolls and writes it here.
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// agent.json left by a reimage: the attempt id the first report carries, the
        /// enrollment credential traded for the token at first start, and the `updateMode`
        /// that decides the update hold before the gateway's first answer.
        #[arg(long, value_name = "FILE")]
        agent_config: Option<PathBuf>,
        /// PEM bundle the gateway's certificate must chain to (default: the system's roots).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Where the agent keeps its report sequence.
        #[arg(long, value_name = "FILE")]
        state_file: PathBuf,
        /// Up to this much random delay before each report, so a fleet booted together does
        /// not report together.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        jitter: Duration,
        /// Send one report and exit: 0 when the gateway accepted it, 1 otherwise.
        #[arg(long)]
        once: bool,
    },
    /// Run N simulated endpoints against a gateway (tests, demos, benchmarks).
    Simulate {
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        #[arg(long)]
        gateway: String,
        #[arg(long, value_enum, default_value = "healthy")]
        scenario: Scenario,
        /// JSON object mapping each simulated endpoint name to its token.
        #[arg(long, value_name = "FILE")]
        tokens: PathBuf,
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Endpoint names are PREFIX-00001, PREFIX-00002, ...
        #[arg(long, default_value = "sim")]
        prefix: String,
        /// Reports per endpoint.
        #[arg(long, default_value_t = 1)]
        reports: u64,
        /// Pause between one endpoint's reports, such as 1s (0s: as fast as possible).
        #[arg(long, default_value = "0s", value_parser = parse_duration_or_zero)]
        pause: Duration,
        /// Requests in flight at once, across all endpoints.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Print the summary as one JSON object (for scripts).
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    recast_crds::duration::parse(s).map_err(|e| e.to_string())
}

fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s == "0" || s == "0s" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// The endpoint this agent reports as: --endpoint, else agent.json's. Both given must agree
/// (agent.json's enrollment credential is bound to its endpoint).
fn endpoint_name(source: &Source, config: Option<&AgentConfig>) -> Result<String, String> {
    match (&source.endpoint, config) {
        (Some(e), Some(c)) if *e != c.endpoint => Err(format!(
            "agent.json is for endpoint {:?}, but --endpoint says {e:?}; drop --endpoint or fix it",
            c.endpoint
        )),
        (Some(e), _) => Ok(e.clone()),
        (None, Some(c)) => Ok(c.endpoint.clone()),
        (None, None) => Err(
            "which endpoint is this? give --endpoint NAME, or --agent-config FILE (the agent.json a reimage writes into the new image)"
                .into(),
        ),
    }
}

/// The gateway to report to: --gateway, else the one agent.json names.
fn gateway_url(given: Option<&str>, config: Option<&AgentConfig>) -> Result<String, String> {
    given
        .map(str::to_string)
        .or_else(|| config.and_then(|c| c.gateway_url.clone()))
        .ok_or_else(|| {
            "which gateway? give --gateway URL, or --agent-config FILE naming one (gatewayUrl)"
                .to_string()
        })
}

fn identity(source: &Source, config: Option<&AgentConfig>) -> Result<Identity, String> {
    let endpoint = endpoint_name(source, config)?;
    let from_file = match &source.attempt_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("reading attempt id {}: {e}", p.display())),
        },
        None => None,
    };
    let attempt_id = from_file.or_else(|| config.map(|c| c.attempt_id.clone()));
    Ok(Identity {
        endpoint,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        attempt_id,
        interval_seconds: source.interval.as_secs().clamp(1, u32::MAX as u64) as u32,
    })
}

fn runner(source: &Source) -> Result<Box<dyn CommandRunner + Send>, String> {
    match &source.replay {
        Some(dir) => {
            collect::check_replay_dir(dir)?;
            Ok(Box::new(ReplayRunner { dir: dir.clone() }))
        }
        None => Ok(Box::new(SystemRunner::default())),
    }
}

/// First start of a reimaged endpoint: trade the enrollment credential for the token, keep it.
async fn enroll(
    sender: &Sender,
    config: &AgentConfig,
    token_file: &Path,
    once: bool,
) -> Result<String, String> {
    use recast_agent::enroll::{enrollment_backoff, enrollment_retryable};
    // A service keeps trying; `--once` (a script) gives up after a few tries.
    let max_tries = if once { 3 } else { u32::MAX };
    let mut tries = 0;
    loop {
        let (status, message) = match sender.enroll(config).await {
            Ok(Ok(token)) => {
                recast_agent::enroll::save_token(token_file, &token)?;
                tracing::info!(attempt = %config.attempt_id, "enrolled with the gateway; token saved");
                return Ok(token);
            }
            Ok(Err((status, message))) => (Some(status), message),
            Err(e) => (None, e.to_string()),
        };
        if !enrollment_retryable(status) || tries + 1 >= max_tries {
            return Err(match status {
                Some(status) => format!(
                    "the gateway refused enrollment ({status}: {message}); if this image was not installed by the current reimage, issue a token with `recastctl token issue` and write it to the token file"
                ),
                None => format!(
                    "cannot reach the gateway to enroll ({message}); check --gateway and the network, then run again"
                ),
            });
        }
        // Until it enrolls the new image cannot report, and its attempt waits for that report:
        // keep trying (the try timeout of the attempt is the backstop).
        let wait = enrollment_backoff(tries);
        tracing::warn!(error = %message, retry_in = ?wait, "enrollment failed; trying again");
        tokio::time::sleep(wait).await;
        tries += 1;
    }
}

fn now_millis(now: Timestamp) -> u64 {
    u64::try_from(now.as_millisecond()).unwrap_or(0)
}

/// The `updateMode` of the agent.json the reimage flow wrote (absent file: no opinion).
fn read_update_mode(path: &Path) -> Result<Option<String>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "reading agent configuration {}: {e}",
                path.display()
            ));
        }
    };
    hold::update_mode_in_agent_config(&text).map_err(|e| {
        format!(
            "agent configuration {}: {e}; fetch it again from the boot service or remove --agent-config",
            path.display()
        )
    })
}

/// Remembers the hold the gateway asked for and applies it at once when it changed.
fn adopt_hold(state_file: &Path, desired: DesiredUpdateHold) -> Result<(), String> {
    let mut st = state::load(state_file).map_err(|e| e.to_string())?;
    if st.update_hold.as_ref() == Some(&desired) {
        return Ok(());
    }
    tracing::info!(held = desired.held, reason = %desired.reason, "the gateway changed the update hold");
    let effective = hold::apply(&hold::SystemExec, Some(&desired), Timestamp::now())
        .map_err(|e| e.to_string())?;
    st.update_hold = Some(desired);
    state::save(state_file, &st).map_err(|e| e.to_string())?;
    tracing::info!(held = effective.held, "update hold applied");
    Ok(())
}

fn read_secret(path: &Path) -> Result<String, String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("reading token file {}: {e}", path.display()))?;
    let t = s.trim().to_string();
    if t.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(t)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recast-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main(cli: Cli) -> Result<(), String> {
    match cli.command {
        Cmd::Collect { source } => collect_once(&source),
        Cmd::Run {
            source,
            gateway,
            token_file,
            agent_config,
            ca_file,
            state_file,
            jitter,
            once,
        } => {
            let reporter = Reporter::start(
                source,
                gateway.as_deref(),
                &token_file,
                agent_config.as_deref(),
                ca_file.as_deref(),
                state_file,
                once,
            )
            .await?;
            reporter.run(jitter, once).await
        }
        Cmd::Simulate {
            endpoints,
            gateway,
            scenario,
            tokens,
            ca_file,
            prefix,
            reports,
            pause,
            concurrency,
            json,
        } => {
            let tokens = read_simulated_tokens(&tokens)?;
            let opts = SimulateOptions {
                gateway,
                ca_file,
                endpoints,
                scenario,
                prefix,
                reports,
                pause,
                tokens: Arc::new(tokens),
                concurrency,
            };
            simulate_fleet(opts, json).await
        }
    }
}

/// `collect`: one report, printed as JSON; nothing is sent.
fn collect_once(source: &Source) -> Result<(), String> {
    let who = identity(source, None)?;
    let runner = runner(source)?;
    let now = Timestamp::now();
    let mut report =
        collect::collect(runner.as_ref(), &who, now_millis(now), now).map_err(|e| e.to_string())?;
    if source.replay.is_none() {
        // Read only: with no instruction, apply changes nothing.
        match hold::apply(&hold::SystemExec, None, now) {
            Ok(effective) => report.update_hold = Some(effective),
            Err(e) => report.collection_errors.push(format!("update hold: {e}")),
        }
    }
    report.validate().map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(())
}

/// Whether one report reached the gateway and was accepted (with `--once`, the exit code).
type Delivered = Result<(), String>;

/// `run`: what the reporting loop needs, set up once.
struct Reporter {
    source: Source,
    who: Identity,
    /// The hold agent.json's updateMode asks for, until the gateway says otherwise.
    initial_hold: Option<DesiredUpdateHold>,
    /// Replayed tool output is someone else's machine: the registry is left alone.
    manage_hold: bool,
    state_file: PathBuf,
    sender: Sender,
    token: String,
}

impl Reporter {
    /// Reads agent.json (if any), checks the identity, and gets the token: from the token
    /// file, or on a reimaged endpoint's first start by enrolling.
    async fn start(
        source: Source,
        gateway: Option<&str>,
        token_file: &Path,
        agent_config: Option<&Path>,
        ca_file: Option<&Path>,
        state_file: PathBuf,
        once: bool,
    ) -> Result<Reporter, String> {
        // A missing agent.json (already consumed, or never written) is no error.
        let config = match agent_config {
            Some(p) if p.exists() => Some(recast_agent::enroll::load(p)?),
            _ => None,
        };
        let who = identity(&source, config.as_ref())?;
        let initial_hold = match agent_config {
            Some(p) => hold::initial(read_update_mode(p)?.as_deref()),
            None => None,
        };
        let manage_hold = source.replay.is_none();
        let gateway = gateway_url(gateway, config.as_ref())?;
        let sender = Sender::new(&gateway, ca_file).map_err(|e| e.to_string())?;
        let token = match (token_file.exists(), &config) {
            (false, Some(c)) => enroll(&sender, c, token_file, once).await?,
            _ => read_secret(token_file)?,
        };
        Ok(Reporter {
            source,
            who,
            initial_hold,
            manage_hold,
            state_file,
            sender,
            token,
        })
    }

    /// Reports every interval (plus jitter) until stopped; with `once`, one report at once,
    /// and whether it was delivered.
    async fn run(&self, jitter: Duration, once: bool) -> Result<(), String> {
        let mut backoff: Option<Duration> = None;
        let mut first = true;
        // Set when the agent acted on a restart order: the next report, which carries the
        // outcome, goes at once. On a refusal recast falls back to the next way without
        // waiting an interval; a scheduled restart leaves only the order's delay.
        let mut report_now = false;
        // With `once`: whether the first report was delivered (the exit code), whatever the
        // follow-up report that carries a restart's outcome does.
        let mut first_delivered: Option<Delivered> = None;
        loop {
            if !once {
                let wait = if std::mem::take(&mut report_now) {
                    Duration::ZERO
                } else {
                    self.next_wait(jitter, &mut first, &mut backoff)
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
            let delivered = match self.collect_report().await? {
                Err(e) => {
                    tracing::error!(error = %e, "no report this interval");
                    Err(format!("no report: {e}"))
                }
                Ok(report) => self.deliver(&report, &mut backoff, &mut report_now).await?,
            };
            if once {
                let first = first_delivered.get_or_insert(delivered);
                if std::mem::take(&mut report_now) {
                    continue;
                }
                return first.clone();
            }
        }
    }

    /// How long to wait before the next report: the gateway's backoff if it asked for one,
    /// else at once for the first report (a fresh image's check-in ends its attempt) and every
    /// interval after; plus random jitter.
    fn next_wait(
        &self,
        jitter: Duration,
        first: &mut bool,
        backoff: &mut Option<Duration>,
    ) -> Duration {
        let extra = fastrand::u64(0..=jitter.as_millis() as u64);
        let base = if *first {
            Duration::ZERO
        } else {
            self.source.interval
        };
        *first = false;
        backoff.take().unwrap_or(base) + Duration::from_millis(extra)
    }

    /// Collects one report (reserving its sequence number) and re-asserts the update hold.
    /// The outer error is a collection task that did not finish; the inner one, no report.
    async fn collect_report(&self) -> Result<Result<AgentReport, String>, String> {
        let src = self.source.clone();
        let who2 = self.who.clone();
        let state_file2 = self.state_file.clone();
        let manage_hold = self.manage_hold;
        // The tools block; keep them off the runtime's threads.
        let initial = self.initial_hold.clone();
        tokio::task::spawn_blocking(move || {
            let runner = runner(&src)?;
            let now = Timestamp::now();
            let seq = state::reserve(&state_file2, now_millis(now)).map_err(|e| e.to_string())?;
            let mut report =
                collect::collect(runner.as_ref(), &who2, seq, now).map_err(|e| e.to_string())?;
            let st = state::load(&state_file2).map_err(|e| e.to_string())?;
            // Every report carries the last restart order's outcome, until another replaces it.
            report.network_restart = st.network_restart;
            if manage_hold {
                // Re-assert the hold every interval: a user or a GPO may have undone it.
                let desired = st.update_hold.or(initial);
                match hold::apply(&hold::SystemExec, desired.as_ref(), now) {
                    Ok(effective) => report.update_hold = Some(effective),
                    Err(e) => report.collection_errors.push(format!("update hold: {e}")),
                }
            }
            Ok::<_, String>(report)
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// Sends the report and logs what the gateway made of it; a rate limit sets `backoff`, and
    /// an accepted report's reply may order a restart into the network (acting on it sets
    /// `report_now`) and change the update hold. The outer error is a task that did not
    /// finish.
    async fn deliver(
        &self,
        report: &AgentReport,
        backoff: &mut Option<Duration>,
        report_now: &mut bool,
    ) -> Result<Delivered, String> {
        Ok(
            match self.sender.send_with_reply(&self.token, report).await {
                Ok((SendOutcome::Accepted, reply)) => {
                    tracing::info!(sequence = report.sequence, build = %report.os.build_string(), "report accepted");
                    if let Some(reply) = reply {
                        // The restart first: its delay is already running for the person at
                        // the machine, and its outcome must reach recast before it ends.
                        if let Some(order) = reply.restart_into_network {
                            *report_now |= self.follow_restart_order(order).await?;
                        }
                        if self.manage_hold {
                            self.adopt_hold_from_reply(reply.update_hold).await?;
                        }
                    }
                    Ok(())
                }
                Ok((SendOutcome::RateLimited(d), _)) => {
                    tracing::warn!(retry_in = ?d, "the gateway asked to slow down");
                    *backoff = Some(d);
                    Err(format!("rate limited; retry in {d:?}"))
                }
                Ok((SendOutcome::Unauthorized(m), _)) => {
                    tracing::error!(
                        message = %m,
                        "the gateway refused this endpoint's token: issue a new one with `recastctl token issue` and write it to the token file"
                    );
                    Err(format!("token refused: {m}"))
                }
                Ok((other, _)) => {
                    tracing::warn!(outcome = ?other, "report refused");
                    Err(format!("report refused: {other:?}"))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "report not delivered; next interval retries");
                    Err(format!("report not delivered: {e}"))
                }
            },
        )
    }

    /// Acts on a restart-into-the-network order, at most once per attempt and try (the state
    /// file remembers). True when it acted, so the outcome is reported at once. With
    /// `--replay`, bcdedit and shutdown are answered from the replay folder (and logged to its
    /// calls.log) instead of run.
    async fn follow_restart_order(&self, order: NetworkRestartOrder) -> Result<bool, String> {
        let src = self.source.clone();
        let state_file = self.state_file.clone();
        let delay_seconds = order.delay_seconds;
        let followed = tokio::task::spawn_blocking(move || {
            // Every reply repeats the order until the machine restarts: one already acted on
            // costs nothing but this read.
            let last = state::load(&state_file)
                .map_err(|e| e.to_string())?
                .network_restart;
            if !restart::is_new(&order, last.as_ref()) {
                return Ok(None);
            }
            // bcdedit writes in the console's code page, read the way the collector reads it.
            let runner = runner(&src)?;
            let (code_page, _) = collect::code_page_of(runner.run(Probe::OemCodePage));
            let exec: Box<dyn Exec> = match &src.replay {
                Some(dir) => Box::new(restart::ReplayExec {
                    dir: dir.clone(),
                    code_page,
                }),
                None => Box::new(ToolExec { code_page }),
            };
            restart::follow(exec.as_ref(), &state_file, &order, Timestamp::now())
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(match followed {
            Ok(Some(o)) => {
                match o.result {
                    NetworkRestartResult::Scheduled => tracing::warn!(
                        attempt = %o.attempt_id, try_number = o.try_number, delay_seconds, entry = %o.detail,
                        "recast ordered a restart into the network to reimage this machine: the one-time network boot is set and the restart scheduled"
                    ),
                    NetworkRestartResult::Refused(reason) => tracing::error!(
                        attempt = %o.attempt_id, try_number = o.try_number, ?reason, detail = %o.detail,
                        "recast ordered a restart into the network, and the agent could not carry it out; recast falls back to the next way"
                    ),
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(error = %e, "the restart into the network was not carried out; the next reply that orders it retries");
                false
            }
        })
    }

    /// Applies the hold the gateway's reply asks for; a failure is logged and retried at the
    /// next interval (the report itself was delivered).
    async fn adopt_hold_from_reply(&self, desired: DesiredUpdateHold) -> Result<(), String> {
        let state_file3 = self.state_file.clone();
        let applied = tokio::task::spawn_blocking(move || adopt_hold(&state_file3, desired))
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = applied {
            tracing::error!(error = %e, "the update hold the gateway asked for was not applied; the next interval retries");
        }
        Ok(())
    }
}

/// The `--tokens` file of `simulate`: endpoint name to token.
fn read_simulated_tokens(tokens: &Path) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(tokens)
        .map_err(|e| format!("reading {}: {e}", tokens.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: expected a JSON object of endpoint name to token: {e}",
            tokens.display()
        )
    })
}

/// `simulate`: runs the simulated fleet and prints its summary (a table, or JSON for
/// scripts).
async fn simulate_fleet(opts: SimulateOptions, json: bool) -> Result<(), String> {
    let endpoints = opts.endpoints;
    let summary = simulate::run(opts).await.map_err(|e| e.to_string())?;
    let p50 = summary.percentile_us(50.0).unwrap_or(0);
    let p99 = summary.percentile_us(99.0).unwrap_or(0);
    if json {
        let v = serde_json::json!({
            "sent": summary.sent,
            "accepted": summary.accepted,
            "refused": summary.refused,
            "transportErrors": summary.transport_errors,
            "held": summary.held,
            "seconds": summary.elapsed.as_secs_f64(),
            "ratePerSecond": summary.rate_per_second(),
            "p50Micros": p50,
            "p99Micros": p99,
        });
        println!("{v}");
    } else {
        println!("endpoints  sent  accepted  refused  errors  held  reports/s  p50 ms  p99 ms");
        println!(
            "{endpoints:>9}  {:>4}  {:>8}  {:>7}  {:>6}  {:>4}  {:>9.0}  {:>6.2}  {:>6.2}",
            summary.sent,
            summary.accepted,
            summary.refused.values().sum::<u64>(),
            summary.transport_errors,
            summary.held,
            summary.rate_per_second(),
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0
        );
        for (k, v) in &summary.refused {
            println!("  {k}: {v}");
        }
    }
    if summary.transport_errors > 0 && summary.accepted == 0 {
        return Err("no report was delivered: is the gateway running at that URL?".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(endpoint: Option<&str>) -> Source {
        Source {
            replay: None,
            endpoint: endpoint.map(str::to_string),
            attempt_file: None,
            interval: Duration::from_secs(300),
        }
    }

    fn config(endpoint: &str, gateway: Option<&str>) -> AgentConfig {
        AgentConfig {
            namespace: "default".into(),
            endpoint: endpoint.into(),
            attempt_id: "kiosk-01-ab-1".into(),
            gateway_url: gateway.map(str::to_string),
            enrollment_token: "x".into(),
        }
    }

    #[test]
    fn agent_json_alone_names_the_endpoint_and_the_gateway() {
        let c = config("kiosk-01", Some("https://recast.example:8443"));
        let who = identity(&source(None), Some(&c)).unwrap();
        assert_eq!(who.endpoint, "kiosk-01");
        assert_eq!(who.attempt_id.as_deref(), Some("kiosk-01-ab-1"));
        assert_eq!(
            gateway_url(None, Some(&c)).unwrap(),
            "https://recast.example:8443"
        );
        // --gateway wins (a site that moved its gateway since the image was applied).
        assert_eq!(
            gateway_url(Some("https://new.example:8443"), Some(&c)).unwrap(),
            "https://new.example:8443"
        );
    }

    #[test]
    fn an_endpoint_that_disagrees_with_agent_json_or_none_at_all_is_refused() {
        let c = config("kiosk-01", None);
        assert_eq!(
            endpoint_name(&source(Some("kiosk-01")), Some(&c)).unwrap(),
            "kiosk-01"
        );
        let e = endpoint_name(&source(Some("kiosk-02")), Some(&c)).unwrap_err();
        assert!(e.contains("agent.json is for endpoint \"kiosk-01\""), "{e}");
        let e = endpoint_name(&source(None), None).unwrap_err();
        assert!(e.contains("--endpoint NAME, or --agent-config"), "{e}");
        let e = gateway_url(None, Some(&c)).unwrap_err();
        assert!(e.contains("--gateway URL"), "{e}");
        assert_eq!(
            endpoint_name(&source(Some("kiosk-09")), None).unwrap(),
            "kiosk-09"
        );
    }
}
