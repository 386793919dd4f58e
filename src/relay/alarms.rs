//! Deadlines of parked handlers (long-polls, connector requests waiting for
//! their answer) on one shared reactor timer.
//!
//! A fresh `async_io::Timer` per wait costs a reactor wake-up when it is
//! registered (an eventfd write, then an extra `epoll_pwait`, `timerfd_settime`
//! and eventfd `read`), on every request. Here a wait is an entry in an
//! ordered map; one driver task keeps one timer set for the earliest entry and
//! wakes the waits that are due. The timer is set again only when a new entry
//! is earlier than it: entries go away when their wait ends, and the timer then
//! fires for nothing and is set for the next one. Deadlines are now + a fixed
//! timeout, so a new entry is usually later than the timer.
//!
//! Single-threaded (`Rc` hub): the driver and the waits run on one executor.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use async_io::Timer;

#[derive(Default)]
pub struct Alarms {
    inner: RefCell<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Waits not yet due, by deadline; the id keeps equal deadlines apart.
    waiting: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
    /// When the driver's timer is set to fire; `None` when it is not set.
    armed: Option<Instant>,
    /// The driver task, woken when a wait needs the timer earlier.
    driver: Option<Waker>,
}

impl Alarms {
    /// Completes once `deadline` has passed. Needs [`Alarms::run`] running on
    /// the same executor.
    pub fn sleep_until(&self, deadline: Instant) -> Sleep<'_> {
        Sleep {
            alarms: self,
            deadline,
            key: None,
        }
    }

    /// The driver: runs for the life of the server.
    pub async fn run(&self) {
        let mut timer = Timer::never();
        poll_fn(|cx| self.drive(&mut timer, cx)).await
    }

    fn drive(&self, timer: &mut Timer, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.borrow_mut();
        if !inner
            .driver
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inner.driver = Some(cx.waker().clone());
        }
        loop {
            let now = Instant::now();
            while let Some(entry) = inner.waiting.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                entry.remove().wake();
            }
            if let Some(&(next, _)) = inner.waiting.keys().next() {
                if inner.armed.is_none_or(|at| at > next) {
                    timer.set_at(next);
                    inner.armed = Some(next);
                }
            }
            if inner.armed.is_none() {
                return Poll::Pending;
            }
            match Pin::new(&mut *timer).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => inner.armed = None,
            }
        }
    }

    #[cfg(test)]
    fn armed(&self) -> Option<Instant> {
        self.inner.borrow().armed
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.inner.borrow().waiting.len()
    }
}

/// A wait on [`Alarms`]; dropping it removes its entry.
pub struct Sleep<'a> {
    alarms: &'a Alarms,
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

impl Future for Sleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.forget();
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let mut inner = self.alarms.inner.borrow_mut();
        let key = match self.key {
            Some(key) => key,
            None => {
                let key = (deadline, inner.next_id);
                inner.next_id = inner.next_id.wrapping_add(1);
                key
            }
        };
        match inner.waiting.get_mut(&key) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => *w = cx.waker().clone(),
            // New, or woken by the driver early (the clock said due there
            // but not here cannot happen; kept for robustness).
            None => {
                inner.waiting.insert(key, cx.waker().clone());
            }
        }
        let driver = match inner.armed {
            Some(at) if at <= deadline => None,
            _ => inner.driver.clone(),
        };
        drop(inner);
        self.key = Some(key);
        if let Some(d) = driver {
            d.wake();
        }
        Poll::Pending
    }
}

impl Sleep<'_> {
    fn forget(&mut self) {
        if let Some(key) = self.key.take() {
            // Never panics in a drop: a busy map leaves the entry, which the
            // driver removes when it is due (waking a finished task is a no-op).
            if let Ok(mut inner) = self.alarms.inner.try_borrow_mut() {
                inner.waiting.remove(&key);
            }
        }
    }
}

impl Drop for Sleep<'_> {
    fn drop(&mut self) {
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    use smol::LocalExecutor;

    fn with_driver<T>(f: impl FnOnce(Rc<Alarms>, &LocalExecutor<'static>) -> T) -> T {
        let alarms = Rc::new(Alarms::default());
        let ex = LocalExecutor::new();
        let a = alarms.clone();
        ex.spawn(async move { a.run().await }).detach();
        f(alarms, &ex)
    }

    #[test]
    fn a_wait_ends_at_its_deadline_not_before() {
        with_driver(|alarms, ex| {
            let start = Instant::now();
            let deadline = start + Duration::from_millis(60);
            async_io::block_on(ex.run(alarms.sleep_until(deadline)));
            assert!(Instant::now() >= deadline);
            assert_eq!(alarms.waiting(), 0);
        });
    }

    #[test]
    fn an_earlier_wait_added_later_still_ends_on_time() {
        with_driver(|alarms, ex| {
            let start = Instant::now();
            let late = start + Duration::from_secs(30);
            let early = start + Duration::from_millis(50);
            let a = alarms.clone();
            let long = ex.spawn(async move { a.sleep_until(late).await });
            async_io::block_on(ex.run(async {
                // Let the driver set its timer for the late wait first.
                Timer::after(Duration::from_millis(10)).await;
                assert_eq!(alarms.armed(), Some(late));
                alarms.sleep_until(early).await;
            }));
            let waited = start.elapsed();
            assert!(waited >= Duration::from_millis(50), "{waited:?}");
            assert!(waited < Duration::from_secs(10), "{waited:?}");
            assert!(!long.is_finished());
            drop(long);
        });
    }

    #[test]
    fn later_waits_leave_the_timer_alone_and_dropped_waits_go() {
        with_driver(|alarms, ex| {
            let start = Instant::now();
            let first = start + Duration::from_millis(80);
            async_io::block_on(ex.run(async {
                let mut a = Box::pin(alarms.sleep_until(first));
                assert!(smol::future::poll_once(&mut a).await.is_none());
                smol::future::yield_now().await;
                assert_eq!(alarms.armed(), Some(first));
                // Later than the timer: it stays set where it is.
                let mut b = Box::pin(alarms.sleep_until(start + Duration::from_secs(60)));
                assert!(smol::future::poll_once(&mut b).await.is_none());
                smol::future::yield_now().await;
                assert_eq!(alarms.armed(), Some(first));
                assert_eq!(alarms.waiting(), 2);
                drop(a);
                assert_eq!(alarms.waiting(), 1);
                // The timer fires for the dropped wait and is set for the one left.
                Timer::at(first + Duration::from_millis(20)).await;
                smol::future::yield_now().await;
                assert_eq!(alarms.armed(), Some(start + Duration::from_secs(60)));
                drop(b);
                assert_eq!(alarms.waiting(), 0);
            }));
        });
    }
}
