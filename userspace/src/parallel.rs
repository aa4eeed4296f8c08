//! Two independent pieces of work on the machine's cores (a policy's halves, its
//! two address families): the loader's large steps take half the time on two.

use std::sync::{Mutex, PoisonError};

/// Runs `first` here and `second` on a scoped thread, returning both results. A
/// thread the OS refuses (a pid limit in a container) is no error: `second` then
/// runs here too. A panic in either is resumed on the caller.
pub fn join<A, B>(first: impl FnOnce() -> A, second: impl FnOnce() -> B + Send) -> (A, B)
where
    B: Send,
{
    // Handed over through a slot: a refused spawn drops the closure it was given,
    // and whichever side finds the slot full runs `second`.
    let slot = Mutex::new(Some(second));
    let run_second = || {
        let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        taken.map(|second| second())
    };
    std::thread::scope(|scope| {
        let other = std::thread::Builder::new().spawn_scoped(scope, run_second);
        let a = first();
        let b = match other {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => None,
        };
        // Exactly one side took `second` out of the slot.
        let b = b.or_else(run_second).expect("second ran on one side");
        (a, b)
    })
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn both_results_come_back_in_order() {
        let data = [1u64, 2, 3, 4];
        let (a, b) = join(
            || data[..2].iter().sum::<u64>(),
            || data[2..].iter().sum::<u64>(),
        );
        assert_eq!((a, b), (3, 7));
    }

    #[test]
    #[should_panic(expected = "second side")]
    fn a_panic_on_the_thread_reaches_the_caller() {
        let _ = join(|| 1, || -> u32 { panic!("second side") });
    }
}
