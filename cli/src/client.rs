//! The CLI's side of the API: typed requests over the agent's Unix socket. Each request is the
//! same query struct the server parses ([`memlens_types::api`]), encoded by serde.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Empty};
use hyper::{body::Bytes, Request, StatusCode};
use hyper_util::rt::TokioIo;
use memlens_types::api::{Endpoint, ErrorBody, EventById, Method, NoQuery};
use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the memlens agent is not running (nothing listens on {0}): start it with `memlens agent` as root, or pass --socket")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the agent's socket is root-only; run this as root")]
    PermissionDenied(PathBuf),
    #[error("cannot talk to the agent on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("cannot encode the request: {0}")]
    Encode(#[from] serde_urlencoded::ser::Error),
    #[error("unexpected answer from the agent: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The agent answered 410 Gone: a pinned census is no longer kept.
    #[must_use]
    pub fn is_gone(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if *status == StatusCode::GONE)
    }
}

/// A client of the agent listening on one socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    #[must_use]
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    /// Asks endpoint `E` and decodes its JSON answer.
    pub async fn request<E>(&self, query: &E::Query) -> Result<E::Response, ClientError>
    where
        E: Endpoint,
        E::Response: DeserializeOwned,
    {
        let body = self.bytes::<E>(query).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Asks endpoint `E` and returns its answer as it came (pprof, SVG).
    pub async fn bytes<E: Endpoint>(&self, query: &E::Query) -> Result<Vec<u8>, ClientError> {
        self.send(E::METHOD, &uri(E::ROUTE, query)?).await
    }

    /// One event by id.
    pub async fn event(&self, id: u64) -> Result<<EventById as Endpoint>::Response, ClientError> {
        self.by_id::<EventById>(id).await
    }

    /// Asks endpoint `E`, whose route has an `{id}`, about `id`.
    pub async fn by_id<E>(&self, id: u64) -> Result<E::Response, ClientError>
    where
        E: Endpoint<Query = NoQuery>,
        E::Response: DeserializeOwned,
    {
        let route = E::ROUTE.replace("{id}", &id.to_string());
        let body = self.send(E::METHOD, &uri(&route, &NoQuery {})?).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn send(&self, method: Method, path_and_query: &str) -> Result<Vec<u8>, ClientError> {
        let socket = &self.socket;
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(socket.clone())
                }
                std::io::ErrorKind::PermissionDenied => {
                    ClientError::PermissionDenied(socket.clone())
                }
                _ => ClientError::Io {
                    path: socket.clone(),
                    source: e,
                },
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let method = match method {
            Method::Get => hyper::Method::GET,
            Method::Post => hyper::Method::POST,
        };
        let request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", "memlens")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Status { status, message });
        }
        Ok(body.to_vec())
    }
}

/// `route?query`, the query encoded as the server decodes it.
fn uri(route: &str, query: &impl Serialize) -> Result<String, ClientError> {
    let query = serde_urlencoded::to_string(query)?;
    Ok(if query.is_empty() {
        route.to_string()
    } else {
        format!("{route}?{query}")
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use memlens_types::{leaks::LeaksQuery, selector::CgroupSelector, MemcgId};

    use super::*;

    #[test]
    fn queries_encode_as_the_server_decodes_them() {
        let query = LeaksQuery {
            cgroup: Some("/kubepods/pod a&b".parse().expect("selector")),
            per_process: true,
            since: Some(Duration::from_secs(600)),
            top: Some(3),
            ..LeaksQuery::default()
        };
        let text = uri("/v1/leaks", &query).expect("uri");
        assert_eq!(
            text,
            "/v1/leaks?cgroup=%2Fkubepods%2Fpod+a%26b&per_process=true&since=10m&top=3"
        );
        let back: LeaksQuery =
            serde_urlencoded::from_str(text.split_once('?').expect("query").1).expect("decode");
        assert_eq!(back, query);
        let by_id = LeaksQuery {
            cgroup: Some(CgroupSelector::Id(MemcgId(42))),
            ..LeaksQuery::default()
        };
        assert_eq!(
            uri("/v1/leaks", &by_id).expect("uri"),
            "/v1/leaks?cgroup=42"
        );
        assert_eq!(uri("/v1/status", &NoQuery {}).expect("uri"), "/v1/status");
    }
}
