//! The CLI's side of the API: one request over the agent's Unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Empty};
use hyper::{body::Bytes, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::ErrorBody;

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
    #[error("unexpected answer from the agent: {0}")]
    Protocol(String),
}

/// GETs `path_and_query` and decodes the JSON answer.
pub async fn get<T: DeserializeOwned>(
    socket: &Path,
    path_and_query: &str,
) -> Result<T, ClientError> {
    let body = get_bytes(socket, path_and_query).await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// POSTs to `path_and_query` (no body) and decodes the JSON answer.
pub async fn post<T: DeserializeOwned>(
    socket: &Path,
    path_and_query: &str,
) -> Result<T, ClientError> {
    let body = send(socket, Method::POST, path_and_query).await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// GETs `path_and_query` and returns the answer's body.
pub async fn get_bytes(socket: &Path, path_and_query: &str) -> Result<Vec<u8>, ClientError> {
    send(socket, Method::GET, path_and_query).await
}

async fn send(socket: &Path, method: Method, path_and_query: &str) -> Result<Vec<u8>, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(socket.to_path_buf())
            }
            std::io::ErrorKind::PermissionDenied => {
                ClientError::PermissionDenied(socket.to_path_buf())
            }
            _ => ClientError::Io {
                path: socket.to_path_buf(),
                source: e,
            },
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
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
