//! Server roles: whether a server is a primary or a standby and whether it accepts writes,
//! which roles a group's `target_session_attrs` accepts, and how we learn the role.
//!
//! PostgreSQL 14+ reports `in_hot_standby` and `default_transaction_read_only` in
//! ParameterStatus messages at startup and again whenever they change (after a promotion or a
//! configuration reload, at the session's next round trip), so a session tells us its server's
//! role without a query. Older servers (and poolers that do not pass these on) are asked with
//! `pg_is_in_recovery()` instead.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::{Client, Connection, SimpleQueryMessage};

use crate::config::TargetSessionAttrs;
use crate::status::SessionStatus;

/// A server's role as far as `target_session_attrs` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Role {
    /// In recovery: a hot standby.
    pub(crate) standby: bool,
    /// New transactions are read-only (a standby, or `default_transaction_read_only = on`).
    pub(crate) read_only: bool,
}

const KNOWN: u8 = 0b100;

impl Role {
    /// From the reported `in_hot_standby` and `default_transaction_read_only` (a standby is
    /// read-only whatever the latter says).
    pub(crate) fn reported(in_hot_standby: bool, default_read_only: bool) -> Self {
        Self { standby: in_hot_standby, read_only: in_hot_standby || default_read_only }
    }

    /// Whether a group with `wanted` may use a server with this role (libpq's meanings).
    pub(crate) fn fits(self, wanted: TargetSessionAttrs) -> bool {
        match wanted {
            TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => true,
            TargetSessionAttrs::ReadWrite => !self.read_only,
            TargetSessionAttrs::ReadOnly => self.read_only,
            TargetSessionAttrs::Primary => !self.standby,
            TargetSessionAttrs::Standby => self.standby,
        }
    }

    /// `"primary"` or `"standby"`.
    pub(crate) fn name(self) -> &'static str {
        if self.standby {
            "standby"
        } else {
            "primary"
        }
    }

    /// Human-readable, for events and errors.
    pub(crate) fn describe(self) -> &'static str {
        match (self.standby, self.read_only) {
            (true, _) => "standby",
            (false, true) => "primary (read-only)",
            (false, false) => "primary",
        }
    }

    fn bits(self) -> u8 {
        KNOWN | u8::from(self.standby) | (u8::from(self.read_only) << 1)
    }

    fn from_bits(bits: u8) -> Option<Self> {
        (bits & KNOWN != 0).then_some(Self { standby: bits & 1 != 0, read_only: bits & 2 != 0 })
    }
}

/// A role that may not be known yet, readable from any thread without a lock.
#[derive(Debug, Default)]
pub(crate) struct RoleCell(AtomicU8);

impl RoleCell {
    /// The last role stored, if any.
    pub(crate) fn get(&self) -> Option<Role> {
        Role::from_bits(self.0.load(Ordering::Acquire))
    }

    /// Stores `role`; returns the previous value when it differs.
    pub(crate) fn set(&self, role: Role) -> Option<Option<Role>> {
        let before = Role::from_bits(self.0.swap(role.bits(), Ordering::AcqRel));
        (before != Some(role)).then_some(before)
    }
}

/// Asks the server (one round trip, no prepared statement).
pub(crate) async fn query_role(client: &Client) -> Result<Role, tokio_postgres::Error> {
    let messages = client.simple_query("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')").await?;
    let row = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    // A server that answers without a row is no PostgreSQL we know; treat it as a primary.
    Ok(Role::reported(row.and_then(|r| r.get(0)) == Some("t"), row.and_then(|r| r.get(1)) == Some("on")))
}

/// Runs a session's connection task. Whenever the server reports a different role (see the
/// module docs; `status` reads the reports off the byte stream), `changed` is called with it.
pub(crate) async fn drive<S, T>(
    mut connection: Connection<S, T>,
    status: Arc<SessionStatus>,
    mut last: Option<Role>,
    changed: impl Fn(Role),
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(|cx| loop {
        let polled = connection.poll_message(cx);
        let now = status.reported_role();
        if now.is_some() && now != last {
            last = now;
            if let Some(role) = now {
                changed(role);
            }
        }
        match polled {
            // Notices and notifications: nobody listens for them.
            Poll::Ready(Some(Ok(_))) => continue,
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_fit_like_libpq() {
        let primary = Role { standby: false, read_only: false };
        let ro_primary = Role { standby: false, read_only: true };
        // A test: a failure here is the test failing.
        let standby = Role::reported(true, false);
        assert!(standby.read_only);
        assert!(primary.fits(TargetSessionAttrs::ReadWrite) && !ro_primary.fits(TargetSessionAttrs::ReadWrite));
        assert!(ro_primary.fits(TargetSessionAttrs::Primary) && ro_primary.fits(TargetSessionAttrs::ReadOnly));
        assert!(standby.fits(TargetSessionAttrs::Standby) && !standby.fits(TargetSessionAttrs::Primary));
    }

    #[test]
    fn cell_reports_changes_only() {
        let cell = RoleCell::default();
        let primary = Role { standby: false, read_only: false };
        assert_eq!(cell.get(), None);
        assert_eq!(cell.set(primary), Some(None));
        assert_eq!(cell.set(primary), None);
        assert_eq!(cell.get(), Some(primary));
    }
}
