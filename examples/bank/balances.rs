//! The read model in PostgreSQL: a balance per account, and the projection's position in the
//! same database, written in the same transaction as the balances it stands for. A crash
//! between the write and anything after it never counts an append twice: the projection
//! starts again after the position the table holds, and an append at or below it changes
//! nothing.

use std::collections::BTreeMap;

use eda::{BoxError, Projected, Projection};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::account::{Account, AccountEvent};

/// The tables, created if missing.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS balances (
        account text PRIMARY KEY,
        cents   bigint NOT NULL
    );
    CREATE TABLE IF NOT EXISTS projection_positions (
        projection text PRIMARY KEY,
        position   bigint NOT NULL
    );
    INSERT INTO projection_positions VALUES ('balances', 0) ON CONFLICT DO NOTHING;
";

/// Balances per account in PostgreSQL.
pub struct PgBalances {
    client: Mutex<Client>,
}

impl PgBalances {
    /// Connects (`host=... port=... user=... dbname=...`) and creates the tables if missing.
    pub async fn connect(config: &str) -> Result<PgBalances, BoxError> {
        let (client, connection) = tokio_postgres::connect(config, NoTls)
            .await
            .map_err(|e| format!("cannot connect to PostgreSQL (`{config}`): {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("PostgreSQL connection closed: {e}");
            }
        });
        client.batch_execute(SCHEMA).await?;
        Ok(PgBalances {
            client: Mutex::new(client),
        })
    }

    /// Every account's balance, by account id.
    pub async fn balances(&self) -> Result<BTreeMap<String, i64>, BoxError> {
        let client = self.client.lock().await;
        let rows = client
            .query("SELECT account, cents FROM balances", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

impl Projection for PgBalances {
    const NAME: &'static str = "balances";
    type Aggregate = Account;

    async fn position(&self) -> Result<u64, BoxError> {
        let client = self.client.lock().await;
        let row = client
            .query_one(
                "SELECT position FROM projection_positions WHERE projection = 'balances'",
                &[],
            )
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0))?)
    }

    async fn apply(&self, append: Projected<AccountEvent>) -> Result<(), BoxError> {
        let mut client = self.client.lock().await;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "SELECT position FROM projection_positions WHERE projection = 'balances' FOR UPDATE",
                &[],
            )
            .await?;
        let position = i64::try_from(append.position)?;
        if position <= row.get::<_, i64>(0) {
            return Ok(()); // applied already (by this instance before a crash, or another)
        }
        for event in &append.events {
            let change = match event {
                AccountEvent::Opened(_) => 0,
                AccountEvent::Deposited(d) => i64::try_from(d.cents)?,
                AccountEvent::Withdrawn(w) => -i64::try_from(w.cents)?,
            };
            tx.execute(
                "INSERT INTO balances (account, cents) VALUES ($1, $2)
                 ON CONFLICT (account) DO UPDATE SET cents = balances.cents + EXCLUDED.cents",
                &[&append.aggregate_id, &change],
            )
            .await?;
        }
        tx.execute(
            "UPDATE projection_positions SET position = $1 WHERE projection = 'balances'",
            &[&position],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reset(&self) -> Result<(), BoxError> {
        let mut client = self.client.lock().await;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM balances", &[]).await?;
        tx.execute(
            "UPDATE projection_positions SET position = 0 WHERE projection = 'balances'",
            &[],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
