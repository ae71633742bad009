//! Parallel work that survives `fork`.
//!
//! rayon's global thread pool does not survive a fork: the child gets a copy of the pool's
//! state but none of its threads, so work sent to it waits forever (`encode_batch` in a
//! `datasets.map(num_proc=2)` worker after the parent used it). Each entry point runs its
//! work through [`install`]: in the process that started the global pool it is used as is;
//! in a forked child the work goes to a pool of the child's own, built on first use.

use rayon::ThreadPool;
use std::sync::{Arc, Mutex, OnceLock};

/// The process that owns rayon's global pool: the first to run parallel work here.
static GLOBAL_OWNER: OnceLock<u32> = OnceLock::new();

/// The pool of a forked child, with the child's pid (a grandchild builds its own again).
static CHILD_POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);

/// `rayon::in_place_scope` in a pool that has threads: `op` runs on this thread, and the
/// tasks it spawns on the pool's.
pub fn in_place_scope<'scope, T>(op: impl FnOnce(&rayon::Scope<'scope>) -> T) -> T {
    match child_pool() {
        None => rayon::in_place_scope(op),
        Some(pool) => pool.in_place_scope(op),
    }
}

/// How many threads the pool of `install` and `in_place_scope` has (without starting
/// rayon's global pool in a forked child).
pub fn threads() -> usize {
    match child_pool() {
        None => rayon::current_num_threads(),
        Some(pool) => pool.current_num_threads(),
    }
}

/// Runs `f`, whose rayon calls (`par_iter`, ...) then use a pool that has threads.
pub fn install<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match child_pool() {
        None => f(),
        Some(pool) => pool.install(f),
    }
}

/// The pool of this process when it is a forked child of the one that owns rayon's global
/// pool; `None` in the owner.
fn child_pool() -> Option<Arc<ThreadPool>> {
    let pid = std::process::id();
    if *GLOBAL_OWNER.get_or_init(|| pid) == pid {
        return None;
    }
    let pool = {
        let mut slot = CHILD_POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*slot {
            Some((owner, pool)) if *owner == pid => Arc::clone(pool),
            _ => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .build()
                    .or_else(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
                    .expect("cannot start a thread in this process");
                let pool = Arc::new(pool);
                *slot = Some((pid, Arc::clone(&pool)));
                pool
            }
        }
    };
    Some(pool)
}
