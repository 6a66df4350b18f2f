//! Wall time by kind of work inside forward passes: the profile behind
//! `basisnet benchmark --profile` (where a batch spends its time).
//!
//! Off by default; a span of a disabled profile costs one atomic load. When enabled, each
//! [`span`] adds its *exclusive* time (its own, minus the spans nested in it) under the
//! current [`stage`] and its label, so the entries add up to the time spent inside spans.
//! On the CPU libtorch finishes every operation before returning, so a span's wall time is
//! its work's; on CUDA, which runs asynchronously, the spans would measure launches, and
//! the benchmark profiles the CPU only.
//!
//! ```
//! use basis_core::timing;
//!
//! timing::enable(true);
//! let y = timing::stage("specialist", || {
//!     timing::span(|| "kernel synthesis".to_string(), || (0..1000u64).sum::<u64>())
//! });
//! timing::enable(false);
//! assert_eq!(y, 499_500);
//! let entries = timing::take();
//! assert_eq!(entries.len(), 1);
//! assert_eq!((entries[0].stage, entries[0].work.as_str()), ("specialist", "kernel synthesis"));
//! assert_eq!(entries[0].calls, 1);
//! ```

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Time spent on one kind of work in one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The stage it ran in (`lightweight`, `specialist`, ...; empty outside any stage).
    pub stage: &'static str,
    /// What ran (`depthwise 3x3 (grouped-conv)`, `batch norm`, ...).
    pub work: String,
    /// Exclusive wall seconds, summed over calls.
    pub seconds: f64,
    /// How many times it ran.
    pub calls: u64,
}

#[derive(Default)]
struct State {
    stage: &'static str,
    /// Seconds of the spans nested in each open span.
    nested: Vec<f64>,
    entries: Vec<Entry>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Turn the profile on or off (for every thread).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the profile is on.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Run `f` with `name` as the stage of the spans inside it (restored after).
pub fn stage<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !is_enabled() {
        return f();
    }
    let previous = STATE.with(|s| std::mem::replace(&mut s.borrow_mut().stage, name));
    let out = f();
    STATE.with(|s| s.borrow_mut().stage = previous);
    out
}

/// Run `f` and, when the profile is on, add its exclusive time under `work()` (called only
/// then, so labels cost nothing when it is off).
pub fn span<T>(work: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    if !is_enabled() {
        return f();
    }
    STATE.with(|s| s.borrow_mut().nested.push(0.0));
    let start = Instant::now();
    let out = f();
    let elapsed = start.elapsed().as_secs_f64();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let nested = s.nested.pop().unwrap_or(0.0);
        if let Some(parent) = s.nested.last_mut() {
            *parent += elapsed;
        }
        let stage = s.stage;
        let work = work();
        let seconds = (elapsed - nested).max(0.0);
        match s
            .entries
            .iter_mut()
            .find(|e| e.stage == stage && e.work == work)
        {
            Some(e) => {
                e.seconds += seconds;
                e.calls += 1;
            }
            None => s.entries.push(Entry {
                stage,
                work,
                seconds,
                calls: 1,
            }),
        }
    });
    out
}

/// The entries recorded on this thread since the last call, most expensive first within
/// each stage (stages in the order they first ran); clears them.
pub fn take() -> Vec<Entry> {
    let mut entries = STATE.with(|s| std::mem::take(&mut s.borrow_mut().entries));
    let order: Vec<&'static str> = entries.iter().fold(Vec::new(), |mut v, e| {
        if !v.contains(&e.stage) {
            v.push(e.stage);
        }
        v
    });
    entries.sort_by(|a, b| {
        let rank = |e: &Entry| order.iter().position(|s| *s == e.stage);
        rank(a).cmp(&rank(b)).then(b.seconds.total_cmp(&a.seconds))
    });
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nested_spans_count_once_and_stages_restore() {
        enable(true);
        let start = Instant::now();
        stage("outer", || {
            span(
                || "parent".into(),
                || {
                    std::thread::sleep(Duration::from_millis(20));
                    stage("inner", || {
                        span(
                            || "child".into(),
                            || std::thread::sleep(Duration::from_millis(30)),
                        )
                    });
                },
            );
            span(|| "after".into(), || ());
        });
        let total = start.elapsed().as_secs_f64();
        enable(false);
        span(|| "off".into(), || ());
        let e = take();
        let get = |w: &str| e.iter().find(|x| x.work == w).unwrap().clone();
        let (parent, child) = (get("parent"), get("child"));
        assert_eq!((parent.stage, child.stage), ("outer", "inner"));
        assert_eq!(get("after").stage, "outer");
        // Each span holds at least its own sleep; the parent's exclusive time leaves out
        // the child's, so the two add up to no more than the whole.
        assert!(parent.seconds >= 0.020, "{parent:?}");
        assert!(child.seconds >= 0.030, "{child:?}");
        assert!(
            parent.seconds + child.seconds <= total,
            "{e:?}, total {total}"
        );
        assert!(e.iter().all(|x| x.work != "off"));
        assert!(take().is_empty());
    }
}
