//! The dashboard at `/ui`: one page, one script, one stylesheet and the vendored chart
//! library (uPlot, `ui/vendor/`, copied from npm by `ui/vendor.sh`), all compiled into
//! the binary so that it works offline. The page is a client of the public API like
//! any other: it sends the API key the user pasted (kept in session storage) as a
//! bearer header, so these routes need no key and serve nothing of a project's.
//!
//! Not in the OpenAPI document: these are pages, not API operations.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// Scripts and styles from this server only (none inline), requests to this server
/// only, no framing. uPlot styles its elements through the CSSOM, which `style-src`
/// does not restrict.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One embedded file and its content type.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_bytes!("../ui/index.html"),
    content_type: "text/html; charset=utf-8",
};
const APP_JS: Asset = Asset {
    body: include_bytes!("../ui/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
const APP_CSS: Asset = Asset {
    body: include_bytes!("../ui/app.css"),
    content_type: "text/css; charset=utf-8",
};
const UPLOT_JS: Asset = Asset {
    body: include_bytes!("../ui/vendor/uPlot.iife.min.js"),
    content_type: "text/javascript; charset=utf-8",
};
const UPLOT_CSS: Asset = Asset {
    body: include_bytes!("../ui/vendor/uPlot.min.css"),
    content_type: "text/css; charset=utf-8",
};

/// `/` sends browsers to the dashboard; `/ui` (and `/ui/`) is the page, its assets
/// beside it.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(|| async { serve(&INDEX) }))
        .route("/ui/", get(|| async { serve(&INDEX) }))
        .route("/ui/app.js", get(|| async { serve(&APP_JS) }))
        .route("/ui/app.css", get(|| async { serve(&APP_CSS) }))
        .route(
            "/ui/vendor/uPlot.iife.min.js",
            get(|| async { serve(&UPLOT_JS) }),
        )
        .route(
            "/ui/vendor/uPlot.min.css",
            get(|| async { serve(&UPLOT_CSS) }),
        )
}

fn serve(asset: &Asset) -> Response {
    (
        [
            (CONTENT_TYPE, asset.content_type),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
            (REFERRER_POLICY, "no-referrer"),
            // The assets change only with the binary; revalidating costs one request.
            (CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response()
}
