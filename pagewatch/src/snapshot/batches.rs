//! Reading numbered batches on two threads and handing them over in order.
//!
//! The calling thread and one helper each claim the next unread batch and
//! read it into one of a few slots; the calling thread hands the batches
//! to a consumer in order as they become ready, and reads more itself
//! whenever the next one is not ready yet. Who reads what is decided as
//! they go: on a busy machine, when one thread is descheduled the other
//! takes the batches on, and nobody waits for a share fixed in advance.
//! A slot is reused once its batch has been handed over, so at most as
//! many batches as there are slots are in memory.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Where the batches are.
#[derive(Debug)]
struct Progress {
    /// Batches claimed by a reader so far.
    claimed: usize,
    /// Batches handed over so far.
    delivered: usize,
    /// Per slot: its batch is read and not handed over yet.
    ready: Vec<bool>,
    /// Stop claiming (the consumer stopped, or the helper is gone).
    stop: bool,
    /// The helper thread has returned (or panicked).
    helper_gone: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks the helper gone however it ends, so the caller never waits for it.
struct HelperGone<'a>(&'a Mutex<Progress>, &'a Condvar);

impl Drop for HelperGone<'_> {
    fn drop(&mut self) {
        let mut p = lock(self.0);
        p.helper_gone = true;
        p.stop = true;
        drop(p);
        self.1.notify_all();
    }
}

/// Read batches `0..n` with `read(slot, i)` and hand each to
/// `deliver(slot, i)` in order on the calling thread. With two or more
/// slots and batches, a helper thread reads too. Returns Ok(false) as
/// soon as `deliver` does (later batches may have been read, never
/// delivered).
pub fn run_ordered<S: Send, E>(
    n: usize,
    slots: &mut [S],
    read: impl Fn(&mut S, usize) + Sync,
    mut deliver: impl FnMut(&mut S, usize) -> Result<bool, E>,
) -> Result<bool, E> {
    if n < 2 || slots.len() < 2 {
        let s = slots.first_mut().expect("at least one slot");
        for i in 0..n {
            read(s, i);
            if !deliver(s, i)? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    let k = slots.len();
    let slots: Vec<Mutex<&mut S>> = slots.iter_mut().map(Mutex::new).collect();
    let state = Mutex::new(Progress {
        claimed: 0,
        delivered: 0,
        ready: vec![false; k],
        stop: false,
        helper_gone: false,
    });
    let cv = Condvar::new();
    // A batch can be claimed when its slot's previous batch was handed over.
    let claim = |p: &mut Progress| {
        (!p.stop && p.claimed < n && p.claimed < p.delivered + k).then(|| {
            p.claimed += 1;
            p.claimed - 1
        })
    };
    let read_one = |i: usize| read(&mut lock(&slots[i % k]), i);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let _gone = HelperGone(&state, &cv);
            let mut p = lock(&state);
            while !p.stop && p.claimed < n {
                match claim(&mut p) {
                    Some(i) => {
                        drop(p);
                        read_one(i);
                        p = lock(&state);
                        p.ready[i % k] = true;
                        cv.notify_all();
                    }
                    None => p = cv.wait(p).unwrap_or_else(PoisonError::into_inner),
                }
            }
        });
        let mut p = lock(&state);
        let r = loop {
            let i = p.delivered;
            if i == n {
                break Ok(true);
            }
            if p.ready[i % k] {
                drop(p);
                let go = deliver(&mut lock(&slots[i % k]), i);
                p = lock(&state);
                p.ready[i % k] = false;
                p.delivered += 1;
                cv.notify_all();
                match go {
                    Ok(true) => {}
                    other => break other,
                }
            } else if let Some(j) = claim(&mut p) {
                drop(p);
                read_one(j);
                p = lock(&state);
                p.ready[j % k] = true;
            } else if p.helper_gone {
                // The helper died holding batch `i`: the scope re-raises
                // its panic.
                break Ok(false);
            } else {
                p = cv.wait(p).unwrap_or_else(PoisonError::into_inner);
            }
        };
        p.stop = true;
        drop(p);
        cv.notify_all();
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_read_once_and_delivered_in_order() {
        for (n, slots) in [(0, 1), (1, 3), (5, 1), (100, 2), (1000, 4)] {
            let mut s = vec![None::<usize>; slots];
            let mut seen = Vec::new();
            let r: Result<bool, ()> = run_ordered(
                n,
                &mut s,
                |slot, i| {
                    assert!(slot.is_none(), "slot reused before delivery");
                    *slot = Some(i * i);
                },
                |slot, i| {
                    assert_eq!(slot.take(), Some(i * i));
                    seen.push(i);
                    Ok(true)
                },
            );
            assert_eq!(r, Ok(true));
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn delivery_can_stop_early() {
        let mut s = vec![0usize; 3];
        let mut seen = Vec::new();
        let r: Result<bool, &str> = run_ordered(
            50,
            &mut s,
            |slot, i| *slot = i,
            |slot, i| {
                seen.push(*slot);
                if i == 10 { Err("gone") } else { Ok(true) }
            },
        );
        assert_eq!(r, Err("gone"));
        assert_eq!(seen, (0..=10).collect::<Vec<_>>());
    }
}
