//! Completion delivery, core → JS: every answer to JS is queued here as a completion record
//! (see [`wire`](super::wire)), the first record of a batch wakes the JS thread once, and JS takes
//! the queue as one Buffer ([`Completions::take`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::BufferSlice;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::guard::guarded;
use super::wire::{completion_field, status};
use crate::error::PoolError;
use crate::oneshot::{AbortCell, LARGE_RESULT};

/// The JS function called (with no arguments) when completions are queued. Weak: it does not
/// keep the event loop alive.
pub(super) type Wake = ThreadsafeFunction<(), (), (), Status, false, true>;

/// Queue capacity kept between batches.
const KEEP_QUEUE: usize = 1 << 20;
/// Completions handed to JS in one Buffer at most (at least one whole record): a backlog of
/// large results must not make one Buffer larger than JS allows.
const TAKE_CHUNK: usize = 64 << 20;
/// How long a large result may wait for a busy JS thread before its connection is freed anyway.
const TAKE_WAIT: Duration = Duration::from_secs(60);

/// Finished operations waiting for the JS thread, as completion records back to back.
pub(super) struct Completions {
    queue: Mutex<Vec<u8>>,
    wake: Wake,
    /// Signalled whenever JS takes the queue.
    taken: Notify,
    /// One-shot statements that have an `AbortSignal`, by id, while they run.
    aborts: Mutex<HashMap<u32, Arc<AbortCell>>>,
    /// The environment and a reference to the wake-up function, to call it directly at the end
    /// of a drive of that environment's loop (see `jsloop::defer_call`); cleared when the pool
    /// object goes.
    direct: Mutex<(usize, usize)>,
}

impl std::fmt::Debug for Completions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completions").field("queued_bytes", &self.queue.lock().len()).finish_non_exhaustive()
    }
}

impl Completions {
    pub(super) fn new(wake: Wake, direct: (usize, usize)) -> Self {
        Self { queue: Mutex::new(Vec::new()), wake, taken: Notify::new(), aborts: Mutex::new(HashMap::new()), direct: Mutex::new(direct) }
    }

    /// Forgets the direct wake-up (the pool object is being finalized) and deletes its reference.
    pub(super) fn forget_direct(&self) {
        let (env, reference) = std::mem::take(&mut *self.direct.lock());
        crate::jsloop::delete_function_ref(env, reference);
    }

    /// Completes `id` with `result`: its result bytes, or its error.
    pub(super) fn complete(&self, id: u32, result: Result<Vec<u8>, PoolError>) {
        match result {
            Ok(bytes) => self.push(id, status::RESULT, &bytes),
            Err(err) => self.push(id, status::ERROR, err.to_json().as_bytes()),
        }
    }

    /// Completes `id`, then lets go of `hold` (what keeps the caller's connection); for a large
    /// result, waits until JS has taken it, so that the connection is not reused while results
    /// pile up faster than JS decodes them. A small result lets go first: JS must not hear of
    /// it while its connection still counts as in use.
    pub(super) async fn deliver<T>(&self, id: u32, bytes: Vec<u8>, hold: T) {
        if bytes.len() < LARGE_RESULT {
            drop(hold);
            return self.complete(id, Ok(bytes));
        }
        let taken = self.taken.notified();
        tokio::pin!(taken);
        taken.as_mut().enable();
        self.complete(id, Ok(bytes));
        let _ = tokio::time::timeout(TAKE_WAIT, taken).await;
        drop(hold);
    }

    /// Queues an asynchronous message of a pg client's session (see [`status::ASYNC_MESSAGE`]).
    pub(super) fn async_message(&self, subscription: u32, kind: u8, body: &[u8]) {
        let mut payload = Vec::with_capacity(5 + body.len());
        payload.extend_from_slice(&subscription.to_be_bytes());
        payload.push(kind);
        payload.extend_from_slice(body);
        self.push(0, status::ASYNC_MESSAGE, &payload);
    }

    /// Queues lifecycle events (a JSON array).
    pub(super) fn events(&self, json: &str) {
        self.push(0, status::EVENTS, json.as_bytes());
    }

    /// Appends one record; the first one after JS emptied the queue wakes the JS thread.
    fn push(&self, id: u32, status: u8, payload: &[u8]) {
        // The result writer keeps results far below this; a record length must never wrap.
        let Ok(len) = u32::try_from(payload.len()) else {
            let err = PoolError::Query(format!("result too large: {} bytes do not fit one result record", payload.len()));
            return self.complete(id, Err(err));
        };
        let was_empty = {
            let mut queue = self.queue.lock();
            let was_empty = queue.is_empty();
            let start = queue.len();
            queue.resize(start + completion_field::PAYLOAD, 0);
            let header = &mut queue[start..];
            header[completion_field::ID..completion_field::ID + 4].copy_from_slice(&id.to_be_bytes());
            header[completion_field::STATUS] = status;
            header[completion_field::LENGTH..completion_field::LENGTH + 4].copy_from_slice(&len.to_be_bytes());
            queue.extend_from_slice(payload);
            was_empty
        };
        if was_empty {
            self.wake();
        }
    }

    fn wake(&self) {
        let (env, reference) = *self.direct.lock();
        if crate::jsloop::defer_call(env, reference) {
            return;
        }
        // Fails only while the JS environment is shutting down; nobody is left to tell.
        let _ = self.wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
    }

    /// The records queued since the last call, as one Buffer: whole records up to
    /// [`TAKE_CHUNK`] bytes (at least one); for the rest, JS is woken again. Copied into memory
    /// the JS engine owns: a Buffer over Rust memory is freed only by a finalizer the engine
    /// runs when it sees fit, and RSS grew by gigabytes under a stream of large results. A copy
    /// that fails leaves the queue as it was.
    pub(super) fn take<'env>(&self, env: &'env Env) -> napi::Result<BufferSlice<'env>> {
        let (copy, more) = guarded("takeCompletions", || {
            let mut queue = self.queue.lock();
            let end = chunk_end(&queue, TAKE_CHUNK);
            let copy = BufferSlice::copy_from(env, &queue[..end])?;
            if end == queue.len() {
                empty(&mut queue);
            } else {
                queue.drain(..end);
            }
            Ok((copy, !queue.is_empty()))
        })?;
        self.taken.notify_waiters();
        if more {
            self.wake();
        }
        Ok(copy)
    }

    /// Like [`take`](Self::take), into `target`, a Buffer JS keeps for this (no allocation per
    /// batch: creating a Buffer was 7 % of the JS thread at concurrency 1). Returns the bytes
    /// written, or `None` when the queue does not fit (it is left as it was: JS takes it with
    /// `take`).
    pub(super) fn take_into(&self, target: &mut [u8]) -> Option<usize> {
        let len = {
            let mut queue = self.queue.lock();
            let len = queue.len();
            if len > target.len() {
                return None;
            }
            target[..len].copy_from_slice(&queue);
            empty(&mut queue);
            len
        };
        self.taken.notify_waiters();
        Some(len)
    }

    /// Makes one-shot statement `id` abortable while it runs.
    pub(super) fn abortable(&self, id: u32) -> Arc<AbortCell> {
        let cell = Arc::new(AbortCell::default());
        self.aborts.lock().insert(id, cell.clone());
        cell
    }

    /// Aborts one-shot statement `id` if it is still abortable.
    pub(super) fn abort(&self, id: u32) {
        let cell = self.aborts.lock().get(&id).cloned();
        if let Some(cell) = cell {
            cell.fire();
        }
    }

    /// Ends a one-shot statement's abortability (before its id is completed: JS may reuse it).
    fn forget_abort(&self, id: u32) {
        self.aborts.lock().remove(&id);
    }
}

/// Empties the queue once JS has taken all of it, keeping at most [`KEEP_QUEUE`] of capacity.
fn empty(queue: &mut Vec<u8>) {
    queue.clear();
    if queue.capacity() > KEEP_QUEUE {
        queue.shrink_to(KEEP_QUEUE);
    }
}

/// Where the first `max` bytes' worth of whole records end in `queue` (at least one record; the
/// whole queue if it is malformed, which it never is).
fn chunk_end(queue: &[u8], max: usize) -> usize {
    if queue.len() <= max {
        return queue.len();
    }
    let mut end = 0;
    while end < queue.len() {
        let length_at = end + completion_field::LENGTH;
        let Some(len) = queue.get(length_at..length_at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else { return queue.len() };
        let next = end + completion_field::PAYLOAD + u32::from_be_bytes(len) as usize;
        if next > queue.len() {
            return queue.len();
        }
        if end > 0 && next > max {
            break;
        }
        end = next;
    }
    end
}

/// Completes an operation exactly once: if its task ends without answering (a panic, or the
/// runtime shut down and dropped it), it answers with an `INTERNAL` error, so that no promise
/// is left pending.
#[derive(Debug)]
pub(super) struct Settle {
    completions: Arc<Completions>,
    id: u32,
    done: bool,
    /// Registered in `Completions::aborts`, to be forgotten there first.
    abortable: bool,
}

impl Settle {
    pub(super) fn new(completions: &Arc<Completions>, id: u32, abortable: bool) -> Self {
        Self { completions: completions.clone(), id, done: false, abortable }
    }

    /// Marks the operation answered (by the caller, right after).
    pub(super) fn disarm(&mut self) {
        self.done = true;
        if self.abortable {
            self.completions.forget_abort(self.id);
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if !self.done {
            if self.abortable {
                self.completions.forget_abort(self.id);
            }
            self.completions
                .complete(self.id, Err(PoolError::Internal("the operation was dropped before it finished (the runtime shut down)".into())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = id.to_be_bytes().to_vec();
        out.push(status::RESULT);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn chunks_end_on_whole_records() {
        let queue = [record(1, &[0; 10]), record(2, &[0; 10]), record(3, &[0; 10])].concat();
        assert_eq!(chunk_end(&queue, queue.len()), queue.len());
        assert_eq!(chunk_end(&queue, 40), 38, "two whole records of 19 bytes");
        assert_eq!(chunk_end(&queue, 5), 19, "at least one record");
    }
}
