//! The private PostgreSQL cluster the PostgreSQL store's tests will run against
//! (`common::pg`), reached the way relaylog will reach it: tokio-postgres over rustls
//! with the ring provider, TLS required, a password, parameters and never literals.

mod common;

use common::pg::{Cluster, ROLE};

#[tokio::test]
async fn a_private_cluster_takes_tls_connections_only() {
    let Some(pg) = Cluster::start() else { return };
    let mut config: tokio_postgres::Config = pg.url("postgres").parse().unwrap();
    config.password(pg.password.as_bytes());
    let (client, connection) = config.connect(pg.tls()).await.unwrap();
    let connection = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl, current_user::text, $1::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[&"a parameter"],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the session is over TLS");
    assert_eq!(row.get::<_, String>(1), ROLE);
    assert_eq!(row.get::<_, String>(2), "a parameter");
    drop(client);
    let _ = connection.await;

    // Without TLS, or with a wrong password, nothing gets in.
    let mut plain: tokio_postgres::Config = pg.url("postgres").parse().unwrap();
    plain.password(pg.password.as_bytes());
    plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
    assert!(plain.connect(tokio_postgres::NoTls).await.is_err());
    let mut wrong: tokio_postgres::Config = pg.url("postgres").parse().unwrap();
    wrong.password("not the password");
    assert!(wrong.connect(pg.tls()).await.is_err());
}
