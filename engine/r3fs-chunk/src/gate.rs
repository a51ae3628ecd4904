//! Admission of chunk-data writes to the device: at most a budget of bytes in flight, granted
//! in arrival order.
//!
//! Why: a disk's queue is first in, first out, and a sequential write stream saturates it with
//! two or three large writes in flight (fio on this project's test disk: 4 MiB writes reach the
//! same bandwidth at queue depth 2 as at 8, at a quarter of the latency). A commit's log write and
//! sync are queued behind whatever data is in flight, and every update waits for its commit; so
//! data queued beyond saturation adds its whole service time to every commit without adding
//! bandwidth. Holding the excess in this gate keeps the device busy while log writes (which do
//! not pass through it) reach the device ahead of it.
//!
//! Single-threaded (a store lives on one executor thread). A permit releases its bytes when
//! dropped; a waiter that is dropped leaves the queue.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Debug)]
struct State {
    budget_bytes: u64,
    inflight_bytes: u64,
    next_ticket: u64,
    /// Tickets waiting, in arrival order, with the waker of their last poll.
    waiting: BTreeMap<u64, Option<Waker>>,
}

impl State {
    fn wake_head(&mut self) {
        if let Some((_, waker)) = self.waiting.iter_mut().next()
            && let Some(waker) = waker.take()
        {
            waker.wake();
        }
    }
}

/// The gate. `budget_bytes = u64::MAX` admits everything at once.
#[derive(Debug)]
pub struct WriteGate {
    state: RefCell<State>,
}

/// Bytes admitted to the device; released on drop.
#[derive(Debug)]
pub struct Permit<'a> {
    gate: &'a WriteGate,
    bytes: u64,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.state.borrow_mut();
        state.inflight_bytes -= self.bytes;
        state.wake_head();
    }
}

/// Removes a waiter that is dropped before it was admitted.
struct Waiting<'a> {
    gate: &'a WriteGate,
    ticket: u64,
    admitted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.admitted {
            let mut state = self.gate.state.borrow_mut();
            state.waiting.remove(&self.ticket);
            state.wake_head();
        }
    }
}

impl WriteGate {
    pub fn new(budget_bytes: u64) -> WriteGate {
        WriteGate {
            state: RefCell::new(State {
                budget_bytes,
                inflight_bytes: 0,
                next_ticket: 0,
                waiting: BTreeMap::new(),
            }),
        }
    }

    /// Waits until `bytes` fit the budget and every earlier caller was admitted. A write larger
    /// than the whole budget is admitted alone, once nothing else is in flight.
    pub async fn admit(&self, bytes: u64) -> Permit<'_> {
        let mut waiting = {
            let mut state = self.state.borrow_mut();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.waiting.insert(ticket, None);
            Waiting { gate: self, ticket, admitted: false }
        };
        poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            let head = state.waiting.keys().next().copied();
            let fits = state.inflight_bytes == 0
                || state.inflight_bytes.saturating_add(bytes) <= state.budget_bytes;
            if head == Some(waiting.ticket) && fits {
                state.waiting.remove(&waiting.ticket);
                state.inflight_bytes += bytes;
                waiting.admitted = true;
                // The next one may fit as well.
                state.wake_head();
                return Poll::Ready(());
            }
            state.waiting.insert(waiting.ticket, Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        Permit { gate: self, bytes }
    }

    /// Bytes admitted and not yet released.
    #[cfg(test)]
    pub fn inflight_bytes(&self) -> u64 {
        self.state.borrow().inflight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use futures::task::noop_waker_ref;
    use std::pin::pin;
    use std::task::Context;

    fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        f.poll_unpin(&mut Context::from_waker(noop_waker_ref()))
    }

    #[test]
    fn admits_within_the_budget_in_arrival_order() {
        let gate = WriteGate::new(8);
        let mut a = pin!(gate.admit(4));
        let Poll::Ready(pa) = poll_once(&mut a) else { panic!("first fits") };
        let mut b = pin!(gate.admit(4));
        let Poll::Ready(pb) = poll_once(&mut b) else { panic!("second fits") };
        assert_eq!(gate.inflight_bytes(), 8);
        let mut c = pin!(gate.admit(2));
        assert!(poll_once(&mut c).is_pending(), "over budget");
        // A smaller later request does not overtake the waiting one.
        let mut d = pin!(gate.admit(1));
        assert!(poll_once(&mut d).is_pending());
        drop(pa);
        let Poll::Ready(pc) = poll_once(&mut c) else { panic!("room after a release") };
        let Poll::Ready(pd) = poll_once(&mut d) else { panic!("fits behind c") };
        assert_eq!(gate.inflight_bytes(), 7);
        drop((pb, pc, pd));
        assert_eq!(gate.inflight_bytes(), 0);
    }

    #[test]
    fn an_oversized_write_goes_alone() {
        let gate = WriteGate::new(8);
        let mut small = pin!(gate.admit(1));
        let Poll::Ready(p) = poll_once(&mut small) else { panic!() };
        let mut big = pin!(gate.admit(100));
        assert!(poll_once(&mut big).is_pending(), "waits for the device to drain");
        drop(p);
        let Poll::Ready(big_permit) = poll_once(&mut big) else { panic!("alone it goes") };
        let mut next = pin!(gate.admit(1));
        assert!(poll_once(&mut next).is_pending());
        drop(big_permit);
        assert!(poll_once(&mut next).is_ready());
    }

    #[test]
    fn a_dropped_waiter_leaves_the_queue() {
        let gate = WriteGate::new(4);
        let mut first = pin!(gate.admit(4));
        let Poll::Ready(p) = poll_once(&mut first) else { panic!() };
        {
            let mut gone = Box::pin(gate.admit(4));
            assert!(poll_once(&mut gone).is_pending());
        }
        let mut after = pin!(gate.admit(4));
        assert!(poll_once(&mut after).is_pending());
        drop(p);
        assert!(poll_once(&mut after).is_ready(), "the cancelled waiter must not block the queue");
        assert_eq!(gate.inflight_bytes(), 0);
    }
}
