//! Reads of the targets' memory off the thread that drains the ring
//! buffer. A read of a code object is a few `process_vm_readv` calls, tens
//! of µs, but nothing bounds it: the page may be swapped out (a disk read),
//! the target's memory may be a FUSE or NFS file mapping that the kernel
//! must fetch, and the call takes the target's `mmap_lock`, which a target
//! doing a large `munmap` holds. A read that hung there would stop lagtrace
//! from draining, and the kernel would drop events.
//!
//! So reads run on one reader thread. The caller waits at most
//! [`WAIT`] for an answer when the reader is idle, and not at all while an
//! earlier read that outlived its wait is still running (a read that hangs
//! costs the drain one `WAIT`, once); an answer that comes late is picked
//! up by a later look-up, and the span that needed it waits for it, parked,
//! while the drain goes on. It must never block the caller for longer than
//! `WAIT`.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    time::Duration,
};

/// Longest wait for an answer: a normal read takes tens of µs. On a loaded
/// host the reader thread itself may wait longer for a CPU; the span is
/// then parked until the answer comes (see `session/pipeline.rs`).
pub const WAIT: Duration = Duration::from_millis(2);

type Job = Box<dyn FnOnce() + Send>;

/// The reader thread, shared by every target.
#[derive(Clone)]
pub struct Reader {
    jobs: Sender<Job>,
    /// Jobs queued or running.
    busy: Arc<AtomicUsize>,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

/// An answer on its way.
pub struct Pending<T>(Receiver<T>);

/// What became of a pending answer.
pub enum Poll<T> {
    Ready(T),
    NotYet,
    /// The job was dropped without an answer (the reader is gone).
    Lost,
}

impl<T> Pending<T> {
    /// The answer if it came, without waiting.
    pub fn poll(&self) -> Poll<T> {
        match self.0.try_recv() {
            Ok(v) => Poll::Ready(v),
            Err(mpsc::TryRecvError::Empty) => Poll::NotYet,
            Err(mpsc::TryRecvError::Disconnected) => Poll::Lost,
        }
    }

    fn wait(&self, d: Duration) -> Poll<T> {
        match self.0.recv_timeout(d) {
            Ok(v) => Poll::Ready(v),
            Err(RecvTimeoutError::Timeout) => Poll::NotYet,
            Err(RecvTimeoutError::Disconnected) => Poll::Lost,
        }
    }
}

impl Reader {
    pub fn new() -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("lagtrace-read".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        if let Err(e) = spawned {
            // Jobs sent to a reader that never started come back `Lost`.
            log::warn!("cannot start the memory reader thread: {e}");
        }
        Self {
            jobs,
            busy: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Run `f` on the reader thread. Waits up to [`WAIT`] for its answer if
    /// the reader had nothing else to do, else returns at once.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> (Poll<T>, Pending<T>) {
        let idle = self.busy.fetch_add(1, Ordering::AcqRel) == 0;
        let (tx, rx) = mpsc::channel();
        let busy = Arc::clone(&self.busy);
        let job: Job = Box::new(move || {
            let answer = f();
            // Idle again before the caller can see the answer, so its next
            // read waits for its own answer.
            busy.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(answer);
        });
        if self.jobs.send(job).is_err() {
            self.busy.fetch_sub(1, Ordering::AcqRel);
        }
        let pending = Pending(rx);
        let now = if idle {
            pending.wait(WAIT)
        } else {
            pending.poll()
        };
        (now, pending)
    }

    /// Reads queued or running.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_hung_read_costs_the_caller_one_wait_at_most() {
        let r = Reader::new();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let t0 = Instant::now();
        // A read that hangs until the gate opens.
        let (first, hung) = r.run(move || gate_rx.recv().is_ok());
        assert!(matches!(first, Poll::NotYet));
        // Later reads do not wait behind it at all.
        let (second, late) = r.run(|| 7);
        assert!(matches!(second, Poll::NotYet));
        // Without the reader thread the caller would hang until the gate.
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(r.busy() > 0);
        gate_tx.send(()).unwrap();
        // The late answers arrive, for later look-ups to pick up.
        let patience = Duration::from_secs(10);
        assert!(matches!(hung.wait(patience), Poll::Ready(true)));
        assert!(matches!(late.wait(patience), Poll::Ready(7)));
        assert_eq!(r.busy(), 0);
    }
}
