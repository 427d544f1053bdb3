//! The ordinary SQL connection to the source (catalog queries, publication
//! management, later the snapshot), over tokio-postgres with the same host,
//! credentials and TLS as the replication connection.

use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, NoTls, Row};

use super::conninfo::{ConnInfo, SslMode};
use super::error::SourceError;
use super::tls::{client_config, MakeRustls};

/// Connects and spawns the connection's driver task; with several hosts
/// (or `target_session_attrs`), to the first that answers and is of the
/// kind asked for.
pub async fn connect(info: &ConnInfo) -> Result<(Client, JoinHandle<()>), SourceError> {
    if !info.needs_choice() {
        return connect_one(info).await;
    }
    choose(info).await.map(|(_, client, driver)| (client, driver))
}

/// The host of `info` to connect to: `info` itself with one host and no
/// `target_session_attrs`, else the first host that answers and is of the
/// kind asked for. Asked at each (re)connect, so that after a failover the
/// promoted server is found.
pub async fn pick_host(info: &ConnInfo) -> Result<std::borrow::Cow<'_, ConnInfo>, SourceError> {
    if !info.needs_choice() {
        return Ok(std::borrow::Cow::Borrowed(info));
    }
    choose(info).await.map(|(chosen, _, _)| std::borrow::Cow::Owned(chosen))
}

async fn choose(info: &ConnInfo) -> Result<(ConnInfo, Client, JoinHandle<()>), SourceError> {
    let wanted = info.target_session_attrs;
    let mut tried = Vec::new();
    for candidate in info.candidates() {
        let address = candidate.address();
        let (client, driver) = match connect_one(&candidate).await {
            Ok(c) => c,
            Err(e @ SourceError::Auth { .. }) => return Err(e),
            Err(e) => {
                tried.push(format!("{address}: {e}"));
                continue;
            }
        };
        let state = client
            .query_one(
                "SELECT pg_catalog.pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
                &[],
            )
            .await;
        match state {
            Ok(row) => {
                let (in_recovery, read_only): (bool, bool) = (
                    row.read("the server state query", 0)?,
                    row.read("the server state query", 1)?,
                );
                if wanted.accepts(in_recovery, read_only) {
                    tracing::debug!(host = %address, "chose source host");
                    return Ok((candidate, client, driver));
                }
                let kind = if in_recovery {
                    "a standby (in recovery)"
                } else if read_only {
                    "read-only (default_transaction_read_only)"
                } else {
                    "a primary"
                };
                tried.push(format!("{address}: {kind}"));
            }
            Err(e) => tried.push(format!("{address}: {e}")),
        }
        driver.abort();
    }
    Err(SourceError::NoHost {
        wanted: wanted.as_str(),
        tried: tried.join("; "),
    })
}

async fn connect_one(info: &ConnInfo) -> Result<(Client, JoinHandle<()>), SourceError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&info.host)
        .port(info.port)
        .user(&info.user)
        .dbname(&info.dbname)
        .application_name(&info.application_name)
        .connect_timeout(info.connect_timeout)
        .ssl_mode(match info.sslmode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            // verify-ca / verify-full: the rustls config does the checking.
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
    if let Some(p) = &info.password {
        config.password(p.expose());
    }
    let classify = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) if db.code().code().starts_with("28") => SourceError::Auth {
            user: info.user.clone(),
            message: db.message().to_owned(),
        },
        _ if e.code().is_none() => SourceError::Connect {
            address: info.address(),
            source: std::io::Error::other(e.to_string()),
        },
        _ => SourceError::Sql(e),
    };
    let address = info.address();
    match client_config(info)? {
        Some(tls) => {
            let (client, conn) = config.connect(MakeRustls::new(tls)).await.map_err(classify)?;
            Ok((client, spawn_driver(conn, address)))
        }
        None => {
            let (client, conn) = config.connect(NoTls).await.map_err(classify)?;
            Ok((client, spawn_driver(conn, address)))
        }
    }
}

/// Reads the columns of catalog answers without panicking: `Row::get`
/// panics when a column's type differs from the one asked for, and server
/// versions do change catalog types (Postgres 18 made
/// `pg_attribute.attndims` an int2). The error names the query.
pub trait ReadColumn {
    fn read<'a, T: FromSql<'a>>(&'a self, query: &'static str, column: usize) -> Result<T, SourceError>;
}

impl ReadColumn for Row {
    fn read<'a, T: FromSql<'a>>(&'a self, query: &'static str, column: usize) -> Result<T, SourceError> {
        self.try_get(column)
            .map_err(|source| SourceError::UnexpectedAnswer { query, column, source })
    }
}

fn spawn_driver<F>(conn: F, address: String) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(%address, "SQL connection to the source ended: {e}");
        }
    })
}
