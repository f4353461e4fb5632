//! Where a training step runs: on a rayon worker whose siblings poll for the CPU kernels' parallel
//! loops, instead of sleeping between them.

/// Runs `f` on a worker thread of a rayon pool of the default size (`RAYON_NUM_THREADS`, or the
/// cores), and returns its result. The CPU kernels' parallel loops then run on the calling worker
/// and its siblings by work stealing, instead of the calling thread handing each loop to the pool
/// and sleeping until it is done: each hand-off costs a wake-up of
/// every worker (measured: ~8% of a small model's step in the scheduler; a 4-layer step has thousands of loops).
/// Falls back to running `f` here if the pool cannot be built. [`crate::trainer::run`] runs its
/// steps and evaluations this way.
pub fn run_on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let _keep = lora_core::kernels::large_blocks::KeepLargeBlocks::keeping();
    on_pool(worker_pool(rayon::current_num_threads()).ok().as_ref(), true, f)
}

/// A pool of `threads` workers.
pub(crate) fn worker_pool(threads: usize) -> std::result::Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build()
}

/// `f` on a worker of `pool`, or here without one; with the other workers polling for its loops when
/// `poll` (the CPU backends, whose kernels run on the pool: on a GPU they would only burn a core).
pub(crate) fn on_pool<R: Send>(pool: Option<&rayon::ThreadPool>, poll: bool, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(pool) if poll => pool.install(|| with_polling_siblings(f)),
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// Runs `f` (on a pool worker) while the pool's other workers poll for the parallel work it hands
/// out, instead of going to sleep between its loops. A rayon worker that finds nothing to do sleeps
/// after a few dozen yields, and each of the step's thousands of loops and products then starts with
/// a futex wake-up of a sleeping sibling (measured: ~8% of a small model's step in the kernel's
/// scheduler, and the siblings late to every loop). The pollers run each job they find through
/// `rayon::yield_now`, so work stealing and the kernels' fixed splits are as before: the results do
/// not change, only who waits how. Between jobs they yield the core (`sched_yield`), so that other
/// processes or a second run in the same process (tests) still get it. They stop when `f` returns.
fn with_polling_siblings<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let siblings = rayon::current_num_threads().saturating_sub(1);
    if siblings == 0 {
        return f();
    }
    let done = AtomicBool::new(false);
    let caller = rayon::current_thread_index();
    let mut out = None;
    rayon::scope(|s| {
        for _ in 0..siblings {
            s.spawn(|_| {
                // A poller that the caller itself picks up (while it waits inside `f`) must return at
                // once: polling there would wait for `f`, which waits below it.
                if rayon::current_thread_index() == caller {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                        std::thread::yield_now();
                    }
                }
            });
        }
        // Set when f returns or unwinds: a panic in a step must end the pollers too, or the scope
        // would wait for them forever instead of passing the panic on.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _done = Done(&done);
        out = Some(f());
    });
    out.expect("f ran")
}
