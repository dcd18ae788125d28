//! What can go wrong in a client command, and the exit code each gets: the server's own
//! refusals keep its words (`message`, `param`), so the user reads what the API says.

use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server answered with an error; its envelope's fields, or the HTTP status
    /// when the body was not one (a proxy's page).
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        param: Option<String>,
    },
    /// No answer: nothing listens, DNS, TLS, or the connection broke before the answer.
    #[error("cannot reach {url}: {cause}")]
    Connect { url: String, cause: String },
    /// The answer started but broke off (a stream or a download cut short).
    #[error("the connection to {url} broke off: {cause}")]
    Interrupted { url: String, cause: String },
    /// The server answered something this client cannot read.
    #[error("unexpected answer from {url}: {detail}")]
    Unexpected { url: String, detail: String },
    /// A local file.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// What the command line asked cannot be done as asked (exit 2, as clap's own).
    #[error("{0}")]
    Usage(String),
    /// The input file's content (a line of `--file`).
    #[error("{0}")]
    Input(String),
}

impl CliError {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_string(),
            source,
        }
    }

    /// Errors a watch reconnects after: the connection, or a server that is busy or
    /// restarting (429 and the gateway's 502–504).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Interrupted { .. } => true,
            Self::Api { status, .. } => matches!(status, 429 | 502..=504),
            _ => false,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }

    /// `error: <message>`, with the parameter at fault when the server named one.
    pub fn report(&self) -> String {
        match self {
            Self::Api {
                param: Some(param), ..
            } => format!("error: {self} (param: {param})"),
            _ => format!("error: {self}"),
        }
    }
}

/// Why a connection failed: the innermost cause ("Connection refused", a TLS
/// certificate's problem), which reqwest's own text ("error sending request for url")
/// wraps in several layers.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// An error and its causes on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}
