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

/// Connects and spawns the connection's driver task.
pub async fn connect(info: &ConnInfo) -> Result<(Client, JoinHandle<()>), SourceError> {
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
