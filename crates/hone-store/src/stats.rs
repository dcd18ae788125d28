//! Numbers for operators, across every project: what the metrics endpoint reads from
//! the database when it is scraped.

use hone_domain::job::JobStatus;

use crate::{Db, StoreError};

impl Db {
    /// Jobs in each status, every status listed (0 where none).
    pub async fn jobs_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status::text, count(*) FROM fine_tuning_jobs GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        Ok(JobStatus::ALL
            .iter()
            .map(|s| {
                let n = rows
                    .iter()
                    .find(|(name, _)| name == s.as_str())
                    .map_or(0, |(_, n)| *n);
                (*s, n)
            })
            .collect())
    }

    /// The connection pool: connections open, and those of them idle.
    pub fn pool_connections(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }
}
