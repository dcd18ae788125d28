//! The HTTP side of every command: the server's URL and key, requests, and the error
//! envelope (`{"error": {"message", "type", "param", "code"}}`) read into [`CliError`].

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{chain, root_cause, CliError};

/// A hone server and the key to call it with.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: SecretString,
}

impl Client {
    pub fn new(base: &str, key: SecretString) -> Result<Self, CliError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "the server URL must start with http:// or https://, not {base:?} (HONE_URL or --url)"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("hone-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Usage(format!("cannot set up HTTP: {}", chain(&e))))?;
        Ok(Self { http, base, key })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with the key; send it with [`Client::send`].
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(self.key.expose_secret())
    }

    /// Sends `request`; a successful answer, or the server's error as [`CliError::Api`].
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request.send().await.map_err(|e| CliError::Connect {
            url: self.base.clone(),
            cause: root_cause(&e),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(api_error(response).await)
    }

    /// `GET path` with `query`, its JSON body.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, CliError> {
        let response = self
            .send(self.request(Method::GET, path).query(query))
            .await?;
        json_body(response).await
    }

    /// `POST path` with a JSON body, its JSON answer.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, CliError> {
        let response = self
            .send(self.request(Method::POST, path).json(body))
            .await?;
        json_body(response).await
    }
}

/// A successful answer's JSON.
pub async fn json_body<T: DeserializeOwned>(response: Response) -> Result<T, CliError> {
    let url = response.url().to_string();
    let bytes = response.bytes().await.map_err(|e| CliError::Interrupted {
        url: url.clone(),
        cause: chain(&e),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| CliError::Unexpected {
        url,
        detail: format!("{e}: {}", snippet(&bytes)),
    })
}

/// The server's error envelope, or (a proxy's page, an empty body) the HTTP status and
/// the start of the body.
async fn api_error(response: Response) -> CliError {
    let status = response.status();
    let url = response.url().to_string();
    let bytes = response.bytes().await.unwrap_or_default();
    let envelope = serde_json::from_slice::<Value>(&bytes).ok();
    let error = envelope.as_ref().and_then(|v| v.get("error"));
    match error.and_then(|e| e.get("message")).and_then(Value::as_str) {
        Some(message) => CliError::Api {
            status: status.as_u16(),
            message: message.to_owned(),
            param: error
                .and_then(|e| e.get("param"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        None => {
            let text = snippet(&bytes);
            CliError::Api {
                status: status.as_u16(),
                message: if text.is_empty() {
                    format!("{url} answered HTTP {status}")
                } else {
                    format!("{url} answered HTTP {status}: {text}")
                },
                param: None,
            }
        }
    }
}

/// The start of a body, on one line, for messages.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::snippet;

    #[test]
    fn snippets_are_one_short_line() {
        assert_eq!(
            snippet(b"<html>\n  <h1>Bad   Gateway</h1>\n"),
            "<html> <h1>Bad Gateway</h1>"
        );
        let long = "é".repeat(300);
        let cut = snippet(long.as_bytes());
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('…'));
    }
}
