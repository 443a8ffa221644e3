//! Client side of the admin socket, used by the CLI and by `tagger cluster`.
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot reach the tagger daemon at {path}: {source} (is it running? `cargo xtask up FILE` starts one)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("request to the daemon failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the daemon answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the daemon's answer is not what this CLI expects: {0}")]
    Decode(#[from] serde_json::Error),
}

pub struct AdminClient {
    path: PathBuf,
}

impl AdminClient {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, AdminError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| AdminError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "tagger-admin")
            .body(Full::new(body))
            .expect("static request parts");
        exchange(stream, request).await
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, AdminError> {
        let body = self.request(Method::GET, path, Bytes::new()).await?;
        Ok(serde_json::from_slice(&body)?)
    }
}

/// One HTTP/1 request over a connected stream, its whole body if the answer
/// is a success. The admin socket's and the daemons' metrics listeners'
/// (`tagger flows --kubernetes`) clients both talk through this.
pub async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Bytes, AdminError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(AdminError::Status {
            status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    Ok(body)
}
