//! The start barrier: [`super::start`] returns only once every executor it spawned has reported
//! that it runs (its state built, its listeners armed), so a broker missing one is never
//! announced as started. The first executor that fails, or does not report in time, fails the
//! start with its own error after the others are stopped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder};

use super::error::{ExecutorError, StartError};

/// How long [`super::start`] waits for every executor to report that it runs (a healthy start
/// takes milliseconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// An executor's name and how its start went.
type Report = (String, Result<(), ExecutorError>);

/// One executor's start-up report to the [`Barrier`], sent once: when the executor runs or when
/// it fails. Dropped unsent, it reports [`ExecutorError::Ended`]: that is how an executor glommio
/// could not create is noticed (glommio drops the start-up closure holding it), and one whose
/// future ended or unwound early.
pub(super) struct StartReport {
    name: String,
    tx: Option<Sender<Report>>,
}

impl StartReport {
    /// The executor runs.
    pub(super) fn ready(mut self) {
        self.send(Ok(()));
    }

    /// The executor cannot run, for `error`.
    pub(super) fn failed(mut self, error: ExecutorError) {
        tracing::error!(event = "runtime.error", executor = %self.name, error = %error);
        self.send(Err(error));
    }

    fn send(&mut self, result: Result<(), ExecutorError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.name.clone(), result));
        }
    }
}

impl Drop for StartReport {
    fn drop(&mut self) {
        self.send(Err(ExecutorError::Ended));
    }
}

/// The executors being started, by name, and the reports they send, until they all run.
pub(super) struct Barrier {
    stop: Arc<AtomicBool>,
    names: Vec<String>,
    joins: Vec<ExecutorJoinHandle<()>>,
    tx: Sender<Report>,
    rx: Receiver<Report>,
}

impl Barrier {
    /// A barrier whose failure sets `stop` (which every executor watches).
    pub(super) fn new(stop: Arc<AtomicBool>) -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            stop,
            names: Vec::new(),
            joins: Vec::new(),
            tx,
            rx,
        }
    }

    /// Spawns executor `name` from `builder`; `body` runs on it and must call
    /// [`StartReport::ready`] once it runs (or [`StartReport::failed`]). A spawn that fails
    /// stops (and joins) the executors spawned before it.
    pub(super) fn spawn<G, F>(
        &mut self,
        name: &str,
        builder: LocalExecutorBuilder,
        body: G,
    ) -> Result<(), StartError>
    where
        G: FnOnce(StartReport) -> F + Send + 'static,
        F: Future<Output = ()> + 'static,
    {
        let report = StartReport {
            name: name.to_owned(),
            tx: Some(self.tx.clone()),
        };
        let spawned = builder.name(name).spawn(move || body(report));
        self.add(name, spawned)
    }

    /// Records a spawned executor; a spawn that failed stops (and joins) the ones before it.
    fn add(
        &mut self,
        name: &str,
        spawned: glommio::Result<ExecutorJoinHandle<()>, ()>,
    ) -> Result<(), StartError> {
        match spawned {
            Ok(j) => {
                self.names.push(name.to_owned());
                self.joins.push(j);
                Ok(())
            }
            Err(e) => {
                self.stop_all();
                Err(StartError::Executor {
                    name: name.to_owned(),
                    source: ExecutorError::glommio(e),
                })
            }
        }
    }

    /// Waits until every executor reports that it runs; returns them by name. The first failure
    /// stops and joins them all and is returned, with the executor's own error when it has one
    /// (glommio's, for an executor it could not create) rather than the report's.
    pub(super) fn wait_running(
        mut self,
        timeout: Duration,
    ) -> Result<Vec<(String, ExecutorJoinHandle<()>)>, StartError> {
        // Only the executors' reports are left: when they are all gone, nobody will report.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        let deadline = Instant::now() + timeout;
        let mut running: Vec<String> = Vec::with_capacity(self.names.len());
        while running.len() < self.names.len() {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok((name, Ok(()))) => running.push(name),
                Ok((name, Err(reported))) => {
                    let joined = self.stop_all();
                    let source = joined
                        .into_iter()
                        .find_map(|(n, r)| (n == name).then_some(r).and_then(Result::err))
                        .map_or(reported, ExecutorError::glommio);
                    return Err(StartError::Executor { name, source });
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    // Not joined: an executor that does not report may not notice `stop` either.
                    self.stop.store(true, Ordering::Relaxed);
                    let late: Vec<&str> = self
                        .names
                        .iter()
                        .filter(|n| !running.contains(n))
                        .map(String::as_str)
                        .collect();
                    return Err(StartError::Executor {
                        name: late.join(", "),
                        source: ExecutorError::Late(timeout),
                    });
                }
            }
        }
        Ok(self.names.into_iter().zip(self.joins).collect())
    }

    /// Stops every executor and waits for them; each one's outcome by name.
    fn stop_all(&mut self) -> Vec<(String, glommio::Result<(), ()>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.names
            .drain(..)
            .zip(self.joins.drain(..))
            .map(|(n, j)| (n, j.join()))
            .collect()
    }
}

/// Runs `fut` until it completes, or gives up (`None`) once `stop` is set: an executor waiting for
/// a peer executor that never comes (it failed) leaves when the barrier stops everything.
pub(super) async fn until_stopped<T>(fut: impl Future<Output = T>, stop: &AtomicBool) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        while !stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        None
    })
    .await
}

#[cfg(test)]
mod tests {
    use glommio::Placement;

    use super::*;

    fn small() -> LocalExecutorBuilder {
        LocalExecutorBuilder::new(Placement::Unbound).io_memory(64 << 10)
    }

    /// An executor body that reports it runs, then runs until `stop`.
    fn runs(
        stop: &Arc<AtomicBool>,
    ) -> impl FnOnce(StartReport) -> std::pin::Pin<Box<dyn Future<Output = ()>>> + Send + 'static
    {
        let stop = stop.clone();
        move |rep| {
            Box::pin(async move {
                rep.ready();
                while !stop.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
            })
        }
    }

    /// The io::Error anywhere in `e`'s chain of sources.
    fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
        let mut next = e.source();
        while let Some(s) = next {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return Some(io);
            }
            next = s.source();
        }
        None
    }

    #[test]
    fn the_first_executor_that_fails_fails_the_start_and_the_others_are_stopped() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut barrier = Barrier::new(stop.clone());
        barrier
            .spawn("runs", small(), runs(&stop))
            .expect("spawned");
        barrier
            .spawn("fails", small(), |rep| async move {
                rep.failed(ExecutorError::Stack(
                    crate::netstack::ConfigError::Invalid {
                        field: "stacks",
                        reason: "none",
                    },
                ))
            })
            .expect("spawned");
        match barrier.wait_running(Duration::from_secs(10)) {
            Err(StartError::Executor {
                name,
                source: ExecutorError::Stack(crate::netstack::ConfigError::Invalid { field, .. }),
            }) => assert_eq!((name.as_str(), field), ("fails", "stacks")),
            other => panic!("{other:?}"),
        }
        // `wait_running` joined the running one: it returned, so it saw `stop`.
        assert!(
            stop.load(Ordering::Relaxed),
            "the running one was told to stop"
        );
    }

    #[test]
    fn an_executor_that_ends_without_reporting_is_a_failed_start() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut barrier = Barrier::new(stop.clone());
        barrier
            .spawn("silent", small(), |rep| async move { drop(rep) })
            .expect("spawned");
        let e = barrier
            .wait_running(Duration::from_secs(10))
            .expect_err("it never ran");
        assert_eq!(
            e.to_string(),
            "executor silent could not start: it ended before it was running"
        );
    }

    #[test]
    fn executors_that_all_report_running_make_a_start() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut barrier = Barrier::new(stop.clone());
        for name in ["a", "b"] {
            barrier.spawn(name, small(), runs(&stop)).expect("spawned");
        }
        let joins = barrier
            .wait_running(Duration::from_secs(10))
            .expect("both run");
        assert!(!stop.load(Ordering::Relaxed));
        let names: Vec<&str> = joins.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        stop.store(true, Ordering::Relaxed);
        for (_, j) in joins {
            j.join().expect("clean stop");
        }
    }

    #[test]
    fn an_executor_glommio_cannot_create_fails_the_start_with_its_io_error() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut barrier = Barrier::new(stop.clone());
        barrier
            .spawn("runs", small(), runs(&stop))
            .expect("spawned");
        // A CPU this machine does not have: glommio refuses to create the executor.
        let e = barrier
            .spawn(
                "no-cpu",
                LocalExecutorBuilder::new(Placement::Fixed(1 << 20)).io_memory(64 << 10),
                |rep| async move { rep.ready() },
            )
            .and_then(|()| barrier.wait_running(Duration::from_secs(10)).map(drop))
            .expect_err("there is no such CPU");
        assert!(
            e.to_string()
                .starts_with("executor no-cpu could not start: "),
            "{e}"
        );
        assert!(io_source(&e).is_some(), "the io::Error is kept: {e:?}");
        assert!(
            stop.load(Ordering::Relaxed),
            "the one before it was stopped"
        );
    }
}
