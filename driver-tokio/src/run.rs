//! `burrow tunnel run`: the shared settings (burrow-core's `settings`: cloudflared's flags,
//! configuration file and credentials), then the tokio connector loop.

use std::process::ExitCode;
use std::sync::Arc;

use burrow_core::settings::{run_config, LoadedConfig, Settings, SetupError, TunnelArgs};
pub use burrow_os::log::init_logging;
use burrow_os::settings::{start, write_pidfile, OsHost};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::connector::{self, Options};
use crate::metrics::{self, Metrics};

/// Origin tasks run on the loop's thread up to this many CPUs, on workers of their own past it
/// (two: measured on a two-CPU machine, where with the origin tasks on the loop's thread the
/// connector was 24-46 % faster at unpinned downloads and 3-7 % slower at pinned uploads).
const ORIGIN_WORKERS_FROM_CPUS: usize = 2;

/// Entry point of `burrow tunnel`.
pub fn main(mut args: TunnelArgs) -> ExitCode {
    let (loaded, settings) = match start(&mut args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The loop's thread runs its own runtime and so waits in its own epoll: a datagram from
    // the edge wakes it directly. On a multi-thread runtime the loop, in `block_on`, was woken
    // by the worker that polled the I/O driver, a second context switch per wake. Origin
    // connections' tasks get a runtime of their own (one worker per CPU) only where there are
    // CPUs to spare beyond the loop's and one more: on two CPUs, shared with the origins
    // themselves, every read handed from a worker to the loop cost two wake-ups, and the
    // connector was faster with its origin tasks on the loop's thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let origins = (cpus > ORIGIN_WORKERS_FROM_CPUS)
                .then(|| {
                    tokio::runtime::Builder::new_multi_thread()
                        .enable_all()
                        .thread_name("burrow-origin")
                        .build()
                })
                .transpose()?;
            Ok((rt, origins))
        });
    let (rt, origins) = match rt {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let origins = origins.as_ref().map(|o| o.handle().clone());
    match rt.block_on(run_tunnel(settings, loaded, origins)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds [`Options`] from the merged settings and the configuration file.
pub fn options(
    settings: &Settings,
    loaded: &LoadedConfig,
    metrics: Arc<Metrics>,
) -> Result<Options, SetupError> {
    let (rc, notices) = run_config(settings, loaded, &OsHost)?;
    for n in notices {
        warn!("{}", n.message());
    }
    Ok(Options {
        run: rc,
        icmp: true,
        metrics,
        origin_runtime: None,
    })
}

/// Sends one message per SIGTERM/SIGINT.
pub fn signals() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}

async fn run_tunnel(
    settings: Settings,
    loaded: LoadedConfig,
    origins: Option<tokio::runtime::Handle>,
) -> Result<(), String> {
    let connector_id = Uuid::new_v4();
    info!(%connector_id, "Generated Connector ID");
    let m = Metrics::new(connector_id);
    let mut opts = options(&settings, &loaded, m.clone()).map_err(|e| e.to_string())?;
    opts.origin_runtime = origins;
    let listener = metrics::bind(&settings.metrics)
        .await
        .map_err(|e| format!("cannot bind metrics server on {}: {e}", settings.metrics))?;
    // At the first registration, as cloudflared: the pid file, and systemd's READY=1 (the
    // unit `service install` writes is Type=notify).
    let pidfile = settings.pidfile.clone();
    let first = m.clone();
    tokio::spawn(async move {
        first.registered.notified().await;
        if let Some(path) = pidfile {
            if let Err((pid_path, e)) = write_pidfile(&path) {
                error!(%pid_path, error = %e, "Unable to write pid");
            }
        }
        if let Err(e) = burrow_os::notify_ready() {
            warn!(error = %e, "cannot notify systemd");
        }
    });
    tokio::spawn(metrics::serve(listener, m));
    crate::heap::spawn_trim();
    let shutdown = signals();
    connector::run(opts, shutdown)
        .await
        .map_err(|e| e.to_string())
}
