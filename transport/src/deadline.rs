//! A deadline polled beside work that may spend the task's cooperative budget.
//!
//! tokio gives each task a budget of resource operations per poll; once it is spent, a timer
//! reports pending too. Work that spends the whole budget on every poll (a loop over an
//! always-ready channel, say) would then keep its deadline from ever firing. The futures that put
//! a deadline on such work check the timer through [`poll_deadline`], as `tokio::time::timeout`
//! does.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use tokio::task::coop;
use tokio::time::Sleep;

/// Polls `timer` after the work it bounds was polled. `had_budget`: whether the task had
/// budget left before the work was polled ([`coop::has_budget_remaining`]). If the work spent
/// it, the timer is polled unconstrained, so the deadline still fires.
pub fn poll_deadline(had_budget: bool, timer: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<()> {
    if had_budget && !coop::has_budget_remaining() {
        pin!(coop::unconstrained(timer)).poll(cx)
    } else {
        timer.poll(cx)
    }
}
