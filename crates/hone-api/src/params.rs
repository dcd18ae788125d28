//! Query parameters shared by the list endpoints.

use hone_domain::PageRequest;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The id of the last item of the previous page.
    pub after: Option<String>,
}

impl ListParams {
    pub fn page(self) -> Result<PageRequest, ApiError> {
        // An id never holds a control character, and Postgres text cannot hold NUL: a
        // cursor with one would otherwise reach the query and fail there (a 500).
        if self
            .after
            .as_deref()
            .is_some_and(|a| a.len() > 256 || a.chars().any(char::is_control))
        {
            return Err(ApiError::invalid(
                "after",
                "invalid_value",
                "after must be the id of the last item of the previous page",
            ));
        }
        PageRequest::new(self.limit, self.after)
            .map_err(|m| ApiError::invalid("limit", "invalid_value", format!("limit {m}")))
    }
}
