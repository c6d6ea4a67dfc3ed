//! A farm inside this process: a coordinator on `127.0.0.1:0` with a temporary data directory
//! and one worker, started from the same library code as `stylefarm-coordinator` and
//! `stylefarm-worker`. `stylefarm render` runs on one, and so can tests.

use std::sync::Arc;

use anyhow::{Context, Result};
use std::future::Future;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use stylefarm_worker::Engine;

/// A running in-process coordinator and worker; [`EmbeddedFarm::stop`] ends both.
#[derive(Debug)]
pub struct EmbeddedFarm {
    url: String,
    stop_worker: Option<oneshot::Sender<()>>,
    stop_coordinator: Option<oneshot::Sender<()>>,
    worker: Option<JoinHandle<Result<()>>>,
    coordinator: Option<JoinHandle<Result<()>>>,
    /// Set, in words, when the worker or the coordinator ends.
    ended: watch::Receiver<Option<String>>,
    /// The coordinator's database and blobs; removed on drop.
    _data_dir: tempfile::TempDir,
}

impl EmbeddedFarm {
    /// Starts a coordinator and one worker running `engine`; `configure` may change the
    /// worker's configuration (its coordinator address is already set).
    ///
    /// # Errors
    /// When no local port or temporary directory can be had.
    pub async fn start(
        engine: Arc<dyn Engine>,
        configure: impl FnOnce(&mut stylefarm_worker::Config),
    ) -> Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("stylefarm-embedded-")
            .tempdir()
            .context("cannot create a temporary directory for the embedded coordinator")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot open a local port for the embedded coordinator")?;
        let addr = listener
            .local_addr()
            .context("the embedded coordinator's port has no address")?;
        let url = format!("http://{addr}");

        let (ended_tx, ended) = watch::channel(None);
        let (stop_coordinator, coordinator_stopped) = oneshot::channel::<()>();
        let config = stylefarm_coordinator::Config::new(data_dir.path());
        let coordinator = tokio::spawn(tell_end(
            Part::Coordinator,
            ended_tx.clone(),
            stylefarm_coordinator::serve(listener, config, async {
                let _ = coordinator_stopped.await;
            }),
        ));

        let (stop_worker, worker_stopped) = oneshot::channel::<()>();
        let mut worker_config = stylefarm_worker::Config::new(url.clone());
        worker_config.name = "embedded".to_string();
        configure(&mut worker_config);
        let worker = tokio::spawn(tell_end(
            Part::Worker,
            ended_tx,
            stylefarm_worker::run(worker_config, engine, async {
                let _ = worker_stopped.await;
            }),
        ));
        Ok(Self {
            url,
            stop_worker: Some(stop_worker),
            stop_coordinator: Some(stop_coordinator),
            worker: Some(worker),
            coordinator: Some(coordinator),
            ended,
            _data_dir: data_dir,
        })
    }

    /// The coordinator's address, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Completes when the worker or the coordinator ends before [`EmbeddedFarm::stop`] (it
    /// failed), saying which and why.
    pub async fn stopped(&self) -> String {
        let mut ended = self.ended.clone();
        let why = match ended.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            // Both parts are gone without a word, which `tell_end` rules out: wait forever.
            None => std::future::pending().await,
        }
    }

    /// Runs `work` (given the coordinator's address) against the farm, then stops the farm.
    /// The farm failing first ends `work` with that error; a failure while stopping after
    /// `work` succeeded is printed as a warning.
    ///
    /// # Errors
    /// What `work` failed with, or why the farm stopped under it.
    pub async fn run<T, F>(self, work: impl FnOnce(String) -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let done = tokio::select! {
            r = work(self.url.clone()) => r,
            why = self.stopped() => Err(anyhow::anyhow!(why)),
        };
        let stopped = self.stop().await;
        let done = done?;
        if let Err(e) = stopped {
            eprintln!("warning: {e:#}");
        }
        Ok(done)
    }

    /// Stops the worker, then the coordinator, and returns the first error either had.
    ///
    /// # Errors
    /// What the worker or the coordinator failed with.
    pub async fn stop(mut self) -> Result<()> {
        let worker = self.stop_part(Part::Worker).await;
        let coordinator = self.stop_part(Part::Coordinator).await;
        worker.and(coordinator)
    }

    async fn stop_part(&mut self, part: Part) -> Result<()> {
        let (stop, handle) = match part {
            Part::Worker => (self.stop_worker.take(), self.worker.take()),
            Part::Coordinator => (self.stop_coordinator.take(), self.coordinator.take()),
        };
        if let Some(stop) = stop {
            // An error means the part has already stopped, which joining tells.
            let _ = stop.send(());
        }
        match handle {
            Some(h) => h
                .await
                .with_context(|| format!("the embedded {} crashed", part.name()))?
                .with_context(|| format!("the embedded {} failed", part.name())),
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedFarm {
    fn drop(&mut self) {
        // Not stopped gracefully (an error on the way): stop both now.
        for h in [&self.worker, &self.coordinator].into_iter().flatten() {
            h.abort();
        }
    }
}

/// Runs one part of the farm and says in `ended` when it is over.
async fn tell_end(
    part: Part,
    ended: watch::Sender<Option<String>>,
    run: impl Future<Output = Result<()>>,
) -> Result<()> {
    let result = run.await;
    let why = match &result {
        Ok(()) => format!("the embedded {} stopped", part.name()),
        Err(e) => format!("the embedded {} failed: {e:#}", part.name()),
    };
    ended.send_replace(Some(why));
    result
}

#[derive(Debug, Clone, Copy)]
enum Part {
    Worker,
    Coordinator,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Coordinator => "coordinator",
        }
    }
}
