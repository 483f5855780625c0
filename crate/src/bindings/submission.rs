//! Submission, JS → core: a batch of operations (the submission format in
//! [`wire`](super::wire)) is read whole, then started together with one wake-up of the runtime
//! ([`Core::submit`]).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use napi::Env;

use super::completions::{Completions, Settle};
use super::core::Core;
use super::guard::test_panic;
use super::handlers::{no_connection, HandlerOp, HandlerSlot};
use super::wire::{op, op_flag, OP_CODE_MASK};
use crate::error::PoolError;
use crate::oneshot::{AbortCell, OneShot};
use crate::pgcompat::{PgMode, PG_MODE};

/// A statement's SQL text (UTF-8, checked when it runs) and its parameter bytes.
#[derive(Debug)]
pub(super) struct Statement {
    pub(super) sql: Bytes,
    pub(super) params: Bytes,
}

impl Statement {
    pub(super) fn text(&self) -> Result<&str, PoolError> {
        std::str::from_utf8(&self.sql).map_err(|_| PoolError::Query("query text is not valid UTF-8".into()))
    }
}

/// One record of a submission, read but not started yet.
#[derive(Debug)]
pub(super) struct Submitted {
    id: u32,
    /// [`op_flag::ABORTABLE`].
    abortable: bool,
    /// [`op_flag::ABORTED`]: answered without running.
    aborted: bool,
    operation: Operation,
}

/// What a submission record asks for.
#[derive(Debug)]
enum Operation {
    Query { group: u32, statement: Statement },
    PgQuery { group: u32, statement: Statement, mode: Arc<PgMode> },
    Acquire { handler: u32, group: u32 },
    HandlerQuery { handler: u32, statement: Statement },
    PgHandlerQuery { handler: u32, statement: Statement, mode: Arc<PgMode> },
    Commit { handler: u32 },
    Rollback { handler: u32 },
}

/// Reads a submission record by record.
struct Reader {
    batch: Bytes,
    pos: usize,
}

impl Reader {
    fn u8(&mut self) -> Option<u8> {
        let v = *self.batch.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.batch.get(self.pos..self.pos.checked_add(4)?)?;
        self.pos += 4;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }

    fn chunk(&mut self) -> Option<Bytes> {
        let len = self.u32()? as usize;
        let end = self.pos.checked_add(len).filter(|&end| end <= self.batch.len())?;
        let chunk = self.batch.slice(self.pos..end);
        self.pos = end;
        Some(chunk)
    }

    fn statement(&mut self) -> Option<Statement> {
        Some(Statement { sql: self.chunk()?, params: self.chunk()? })
    }

    /// The options chunk of a pg operation.
    fn pg_mode(&mut self) -> Option<Arc<PgMode>> {
        PgMode::parse(&self.chunk()?).ok().map(Arc::new)
    }

    fn record(&mut self) -> Option<Submitted> {
        let op_byte = self.u8()?;
        let id = self.u32()?;
        let subject = self.u32()?;
        let acquire_group = self.u32()?;
        let operation = match op_byte & OP_CODE_MASK {
            op::QUERY => {
                let statement = self.statement()?;
                test_panic(&statement.sql, true);
                Operation::Query { group: subject, statement }
            }
            op::HANDLER_QUERY => {
                let statement = self.statement()?;
                test_panic(&statement.sql, true);
                Operation::HandlerQuery { handler: subject, statement }
            }
            op::PG_QUERY => Operation::PgQuery { group: subject, statement: self.statement()?, mode: self.pg_mode()? },
            op::PG_HANDLER_QUERY => Operation::PgHandlerQuery { handler: subject, statement: self.statement()?, mode: self.pg_mode()? },
            op::ACQUIRE => Operation::Acquire { handler: subject, group: acquire_group },
            op::COMMIT => Operation::Commit { handler: subject },
            op::ROLLBACK => Operation::Rollback { handler: subject },
            _ => return None,
        };
        Some(Submitted { id, abortable: op_byte & op_flag::ABORTABLE != 0, aborted: op_byte & op_flag::ABORTED != 0, operation })
    }
}

/// Reads a whole submission before anything is started, so that a malformed one (or a panic
/// while reading it) leaves no operation of it half-started: JS then fails them all. A
/// malformed batch is a bug in `lib/native.ts`.
pub(super) fn read_batch(batch: Bytes) -> Result<Vec<Submitted>, PoolError> {
    let mut reader = Reader { batch, pos: 0 };
    let mut records = Vec::new();
    while reader.pos < reader.batch.len() {
        records.push(reader.record().ok_or_else(|| PoolError::Internal("malformed submission".into()))?);
    }
    Ok(records)
}

/// Work found in one submission, started together on the runtime.
enum Job {
    Query {
        id: u32,
        shot: Arc<OneShot>,
        statement: Statement,
        abort: Option<Arc<AbortCell>>,
    },
    /// A one-shot statement of `pgdbpool/pg`.
    PgQuery {
        id: u32,
        shot: Arc<OneShot>,
        statement: Statement,
        mode: Arc<PgMode>,
    },
    RunHandler(Arc<HandlerSlot>),
    /// A job's future that the JS thread's loop did not take (see `jsloop::try_run`).
    Started(BoxFuture<'static, ()>),
}

impl Job {
    fn run(self, completions: Arc<Completions>) -> BoxFuture<'static, ()> {
        match self {
            Job::Query { id, shot, statement, abort } => Box::pin(async move {
                // The worker's spin is for statements it waits on, not for those a JS thread polls.
                let _in_flight = (!crate::jsloop::driving()).then(crate::quiet::InFlight::start);
                let mut settle = Settle::new(&completions, id, abort.is_some());
                let run = AssertUnwindSafe(async {
                    test_panic(&statement.sql, false);
                    shot.run(statement.text()?, &statement.params, abort.as_deref()).await
                })
                .catch_unwind()
                .await;
                settle.disarm();
                match run {
                    Ok(Ok((bytes, ticket))) => completions.deliver(id, bytes, ticket).await,
                    Ok(Err(err)) => completions.complete(id, Err(err)),
                    Err(payload) => completions.complete(id, Err(PoolError::from_panic("one-shot query", &*payload))),
                }
            }),
            Job::PgQuery { id, shot, statement, mode } => {
                Box::pin(PG_MODE.scope(mode, Job::Query { id, shot, statement, abort: None }.run(completions)))
            }
            Job::RunHandler(slot) => Box::pin(slot.run_queue(completions)),
            Job::Started(task) => task,
        }
    }
}

impl Core {
    /// Runs a lone one-shot statement's job on this JS thread's loop, or queues it for the
    /// worker when the loop has something in flight already (see `jsloop::try_run`).
    fn run_on_loop(&self, env: &Env, job: Job, jobs: &mut Vec<Job>) {
        if let Err(task) = crate::jsloop::try_run(env, job.run(self.completions.clone())) {
            jobs.push(Job::Started(task));
        }
    }

    /// Starts the operations of a submission; each one completes its id. With `quiet` (nothing
    /// else of the pool object in flight), a one-shot statement alone in it may run on the JS
    /// thread's own loop; under load everything goes to the worker, so that no protocol work
    /// moves onto a busy event loop.
    pub(super) fn submit(&self, env: &Env, batch: Vec<Submitted>, quiet: bool) {
        let alone = quiet && batch.len() == 1;
        let mut jobs = Vec::new();
        for Submitted { id, abortable, aborted, operation } in batch {
            if aborted {
                // Aborted in JS before it was handed over: it never runs.
                self.completions.complete(id, Err(PoolError::Aborted));
                continue;
            }
            match operation {
                Operation::Query { group, statement } => match self.oneshot(group) {
                    // Alone in flight on this JS thread: it runs on the thread's own loop.
                    Some(shot) if alone && !abortable => self.run_on_loop(env, Job::Query { id, shot, statement, abort: None }, &mut jobs),
                    Some(shot) => {
                        let abort = abortable.then(|| self.completions.abortable(id));
                        jobs.push(Job::Query { id, shot, statement, abort });
                    }
                    None => self.completions.complete(id, Err(PoolError::Closed)),
                },
                Operation::PgQuery { group, statement, mode } => match self.oneshot(group) {
                    Some(shot) if alone => self.run_on_loop(env, Job::PgQuery { id, shot, statement, mode }, &mut jobs),
                    Some(shot) => jobs.push(Job::PgQuery { id, shot, statement, mode }),
                    None => self.completions.complete(id, Err(PoolError::Closed)),
                },
                Operation::Acquire { handler, group } => match self.group(group) {
                    Ok(group) => {
                        let slot = HandlerSlot::new(group, None, self.caller());
                        self.handlers.lock().insert(handler, slot.clone());
                        slot.push(HandlerOp::Acquire { id });
                        jobs.push(Job::RunHandler(slot));
                    }
                    Err(e) => self.completions.complete(id, Err(e)),
                },
                Operation::HandlerQuery { handler, statement } => self.queue_on(handler, HandlerOp::Query { id, statement }, &mut jobs),
                Operation::PgHandlerQuery { handler, statement, mode } => {
                    self.queue_on(handler, HandlerOp::PgQuery { id, statement, mode }, &mut jobs)
                }
                Operation::Commit { handler } => self.queue_on(handler, HandlerOp::Commit { id }, &mut jobs),
                Operation::Rollback { handler } => self.queue_on(handler, HandlerOp::Rollback { id }, &mut jobs),
            }
        }
        if jobs.is_empty() {
            return;
        }
        let completions = self.completions.clone();
        // One wake-up of the runtime for the whole batch, and one task that drives every job of
        // it. All jobs get their first poll before the task yields, so each statement is already
        // queued on its connection when that connection's task runs: the statements of one
        // batch that share a connection go out in one write, not one write each. Should the
        // runtime be gone, the jobs are dropped and each one's `Settle` answers it.
        crate::rt::spawn(async move {
            let mut running: FuturesUnordered<BoxFuture<'static, ()>> = jobs.into_iter().map(|job| job.run(completions.clone())).collect();
            while running.next().await.is_some() {}
        });
    }

    /// Queues `handler_op` on `handler`, starting the handler's task if it is idle.
    fn queue_on(&self, handler: u32, handler_op: HandlerOp, jobs: &mut Vec<Job>) {
        let slot = self.handlers.lock().get(handler).cloned();
        match slot {
            Some(slot) => {
                if slot.push(handler_op) {
                    jobs.push(Job::RunHandler(slot));
                }
            }
            None => {
                let id = handler_op.id();
                if handler_op.is_statement() {
                    self.completions.complete(id, Err(no_connection()));
                } else {
                    // Nothing to end on a handler that never took a connection.
                    self.completions.complete(id, Ok(Vec::new()));
                }
            }
        }
    }
}
