//! The quiet-pool fast path: while only a few one-shot statements are in flight, the runtime's
//! worker keeps polling for their answers instead of going to sleep.
//!
//! A round trip through a sleeping worker costs two thread wake-ups besides the one the JS
//! thread takes anyway: JS's submission wakes the worker, and the server's answer wakes it
//! again. So while 1 to [`SPIN_MAX`] one-shot statements are in flight, one task yields in a
//! loop; each yield makes the
//! worker poll its sockets without blocking, so an answer is read the moment it lands, and a
//! submission that arrives meanwhile finds the worker awake. The spin ends [`GRACE`] after the
//! last operation finished (a request handler's next statement usually comes sooner), and
//! [`LONG_STATEMENT`] after the last submission or answer (a long statement is waited for
//! asleep). An idle pool never spins; under load the worker has real work and the spin stops.
//! Handler statements do not spin: a transaction's JS work between its statements left the
//! spinning worker competing with JS and the server for two cores (the short-transaction
//! benchmark ran 20 % slower at concurrency 1 and 64).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Above this many operations in flight the worker is busy anyway.
const SPIN_MAX: usize = 4;
/// How long the worker stays awake after the last operation finished.
const GRACE: Duration = Duration::from_micros(200);
/// How long the worker stays awake with operations in flight but nothing happening.
const LONG_STATEMENT: Duration = Duration::from_millis(2);
/// A gap this long between two turns of the spin means the worker was descheduled or busy:
/// the cores are contended, and spinning would take CPU from the server and from JS.
const CONTENDED: Duration = Duration::from_micros(100);
/// How long the spin stays off after it found the cores contended.
const BACK_OFF: Duration = Duration::from_millis(50);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static SPINNING: AtomicBool = AtomicBool::new(false);
/// Nanoseconds since [`EPOCH`] of the last submission or answer.
static LAST_ACTIVITY: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds since [`EPOCH`] before which no spin starts.
static BACKED_OFF_UNTIL: AtomicU64 = AtomicU64::new(0);
/// `PGDBPOOL_SPIN=off` in the environment: never spin (read once per process).
static OFF: LazyLock<bool> = LazyLock::new(|| std::env::var("PGDBPOOL_SPIN").is_ok_and(|v| v.eq_ignore_ascii_case("off")));
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_nanos() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

/// A one-shot statement in flight, from its first poll until its task ends (however it ends).
#[derive(Debug)]
pub(crate) struct InFlight(());

impl InFlight {
    /// Counts the statement in; starts the spin when the pool is quiet enough for it.
    pub(crate) fn start() -> Self {
        started();
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        finished();
    }
}

fn started() {
    let now = now_nanos();
    LAST_ACTIVITY.store(now, Ordering::Relaxed);
    let in_flight = IN_FLIGHT.fetch_add(1, Ordering::AcqRel) + 1;
    if !*OFF && in_flight <= SPIN_MAX && now >= BACKED_OFF_UNTIL.load(Ordering::Relaxed) && !SPINNING.swap(true, Ordering::AcqRel) {
        crate::rt::spawn(spin());
    }
}

fn finished() {
    LAST_ACTIVITY.store(now_nanos(), Ordering::Relaxed);
    let _ = IN_FLIGHT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

/// Whether the worker should stay awake at `now` (nanoseconds since [`EPOCH`]).
fn worth_spinning(now: u64) -> bool {
    let in_flight = IN_FLIGHT.load(Ordering::Acquire);
    let quiet_for = Duration::from_nanos(now.saturating_sub(LAST_ACTIVITY.load(Ordering::Relaxed)));
    match in_flight {
        0 => quiet_for < GRACE,
        n if n <= SPIN_MAX => quiet_for < LONG_STATEMENT,
        _ => false,
    }
}

async fn spin() {
    // One clock read per turn: it decides both whether to go on and whether the turn came late.
    let contended = CONTENDED.as_nanos() as u64;
    let mut last_turn = now_nanos();
    loop {
        while worth_spinning(last_turn) {
            tokio::task::yield_now().await;
            let now = now_nanos();
            if now - last_turn > contended {
                BACKED_OFF_UNTIL.store(now + BACK_OFF.as_nanos() as u64, Ordering::Relaxed);
                break;
            }
            last_turn = now;
        }
        SPINNING.store(false, Ordering::Release);
        // A submission between the last check and the store saw the flag still set and left
        // the spin to this task.
        let now = now_nanos();
        if !worth_spinning(now) || now < BACKED_OFF_UNTIL.load(Ordering::Relaxed) || SPINNING.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}
