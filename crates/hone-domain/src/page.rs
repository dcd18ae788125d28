//! Cursor pagination as in the OpenAI API: `limit` and `after=<id>`, newest first.

use serde::Serialize;
use utoipa::ToSchema;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    pub limit: i64,
    pub after: Option<String>,
}

impl PageRequest {
    /// Clamps what the user asked for into the range the server serves; a limit
    /// outside it is an error, not silently changed.
    pub fn new(limit: Option<i64>, after: Option<String>) -> Result<Self, String> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(format!("must be between 1 and {MAX_LIMIT}"));
        }
        Ok(Self { limit, after })
    }
}

/// `{"object": "list", "data": [...], "has_more": bool}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows: the extra row only says there is more.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, id_of: impl Fn(&T) -> String) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Self {
            object: "list",
            first_id: rows.first().map(&id_of),
            last_id: rows.last().map(&id_of),
            data: rows,
            has_more,
        }
    }
}
