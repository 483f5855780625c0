//! Tests of the core against a real server, named by `PGDBPOOL_TEST_URL`
//! (`postgres://user:pass@host:port/db`); `npm run test:rust` starts an embedded server and sets
//! it. Without it they pass without running, except under `CI`, where a missing server fails them.
//! The JS suite covers the same paths through the bindings; these cover what the bindings do not
//! expose yet. Only tests: an `expect` that fails here is the test failing.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use napi::bindgen_prelude::block_on;

use crate::config::{Balance, ChannelBinding, EndpointConfig, GroupConfig, PoolConfig, SslMode, TargetSessionAttrs};
use crate::error::PoolError;
use crate::events::{Event, EventKind};
use crate::pool::{Group, Pool};

fn endpoint(id: &str, host: &str, port: u16, name: &str, user: &str, pass: Option<String>) -> EndpointConfig {
    EndpointConfig {
        id: id.into(),
        host: host.into(),
        port,
        name: name.into(),
        user: user.into(),
        pass,
        ssl: SslMode::Disable,
        ssl_ca: None,
        channel_binding: ChannelBinding::Prefer,
        ssl_cert: None,
        ssl_key: None,
        connect_timeout: 2.0,
        query_timeout: 5000,
        session_tmp_buffer: 8,
        application_name: "pgdbpool-core-test".into(),
        weight: 1,
        options: String::new(),
    }
}

/// The server of `PGDBPOOL_TEST_URL`, as endpoint `real`.
fn real_endpoint() -> Option<EndpointConfig> {
    let Ok(url) = std::env::var("PGDBPOOL_TEST_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "PGDBPOOL_TEST_URL is not set: in CI these tests must run (npm run test:rust starts a server)"
        );
        return None;
    };
    let pg = tokio_postgres::Config::from_str(&url).expect("PGDBPOOL_TEST_URL");
    let host = match pg.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns, reason = "Unix sockets exist only on unix")]
        _ => return None,
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let pass = pg.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
    Some(endpoint("real", &host, port, pg.get_dbname().unwrap_or("postgres"), pg.get_user().unwrap_or("postgres"), pass))
}

fn group(name: &str, endpoints: Vec<usize>, max_uses: u64) -> GroupConfig {
    GroupConfig {
        name: name.into(),
        connection_count: 2,
        autocommit: true,
        sqlprepare: false,
        endpoints,
        target_session_attrs: TargetSessionAttrs::Any,
        balance: Balance::RoundRobin,
        acquire_timeout: 5000,
        max_waiting: 100,
        min_idle: 0,
        idle_timeout: 0,
        max_lifetime: 0,
        max_uses,
        ping_after_idle: 10_000,
        statement_cache_size: 16,
        pipeline: 1,
        reset_on_release: true,
    }
}

/// One statement on any connection of the group, released at once.
async fn run_one_shot(group: &Arc<Group>, sql: &str) -> Result<Vec<u8>, PoolError> {
    let mut lease = match group.try_acquire_now() {
        Some(lease) => lease,
        None => group.acquire().await?,
    };
    lease.query(sql, &[], true).await
}

fn has(events: &[Event], kind: EventKind, endpoint: &str, group: Option<&str>, reason: Option<&str>) -> bool {
    events.iter().any(|e| {
        e.kind == kind
            && e.endpoint.as_deref() == Some(endpoint)
            && e.group.as_deref() == group
            && reason.is_none_or(|r| e.reason.as_deref().is_some_and(|text| text.contains(r)))
    })
}

#[test]
fn events_record_the_lifecycle() {
    let Some(real) = real_endpoint() else { return };
    let dead = endpoint("dead", "127.0.0.1", 1, "x", "x", None);
    block_on(async {
        let config = PoolConfig { endpoints: vec![real, dead], groups: vec![group("g", vec![0, 1], 1)], health_interval: 50 };
        let pool = Pool::new(config).expect("pool");
        pool.warm_up().await.expect("warm up");
        let g = pool.groups[0].clone();
        assert!(run_one_shot(&g, "SELECT 1").await.is_ok());
        // max_uses 1: the connection is closed at release and replaced in the background.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        let replaced = |seen: &[Event]| {
            has(seen, EventKind::Disconnect, "real", Some("g"), Some("max_uses"))
                && seen.iter().filter(|e| e.kind == EventKind::Connect).count() >= 2
        };
        while Instant::now() < deadline && !replaced(&seen) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            seen.extend(pool.events().drain());
        }
        pool.close(Duration::from_secs(1)).await;
        seen.extend(pool.events().drain());
        assert!(!pool.events().has_events());
        assert_eq!(pool.events().dropped(), 0);
        assert!(has(&seen, EventKind::Connect, "real", Some("g"), None), "{seen:?}");
        assert!(has(&seen, EventKind::RoleChange, "real", None, Some("primary")), "{seen:?}");
        assert!(has(&seen, EventKind::Error, "dead", Some("g"), Some("refused")), "{seen:?}");
        assert!(has(&seen, EventKind::Ban, "dead", None, Some("refused")), "{seen:?}");
        assert!(has(&seen, EventKind::Disconnect, "real", Some("g"), Some("max_uses")), "{seen:?}");
        assert!(has(&seen, EventKind::Disconnect, "real", Some("g"), Some("closed")), "{seen:?}");
        let json = serde_json::to_string(&seen).expect("json");
        assert!(json.contains(r#""type":"disconnect""#) && json.contains(r#""reason":"max_uses""#), "{json}");
    });
}

/// The figures of `pool`'s first group: (size, idle, in use, opening).
fn counts(pool: &Pool) -> (u64, u64, u64, u64) {
    let stats: serde_json::Value = serde_json::from_str(&pool.stats_json(None)).expect("stats");
    let g = &stats[0];
    let n = |key: &str| g[key].as_u64().expect(key);
    (n("size"), n("idle"), n("inUse"), n("opening"))
}

#[test]
fn a_session_that_arrives_as_its_checkout_gives_up_is_pooled() {
    let Some(real) = real_endpoint() else { return };
    block_on(async {
        let mut only = group("g", vec![0], 0);
        only.connection_count = 1;
        let pool = Pool::new(PoolConfig { endpoints: vec![real], groups: vec![only], health_interval: 1000 }).expect("pool");
        let g = pool.groups[0].clone();
        // A checkout that has to open its session: polled once (the connect starts in the
        // background), left alone until the session has arrived, then dropped unpolled — as the
        // checkout of a statement aborted just as its session arrives is.
        let mut checkout = Box::pin(g.acquire());
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(checkout.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        let deadline = Instant::now() + Duration::from_secs(5);
        while counts(&pool).3 > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(counts(&pool).3, 0, "the connect finished");
        drop(checkout);
        assert_eq!(counts(&pool), (1, 1, 0, 0), "the session is pooled, not lost with its unit still in use");
        assert!(run_one_shot(&g, "SELECT 1").await.is_ok());
        pool.close(Duration::from_secs(1)).await;
    });
}
