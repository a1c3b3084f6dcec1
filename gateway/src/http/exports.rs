//! `GET /exports/<file>`: a finished analytics export (`exportAnalytics`), streamed from the export
//! folder to administrators and auditors (their access token, or an API token with the `admin`
//! scope). Only names an export job writes (`<id>.parquet`, `<id>.csv`) are served.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use cloudsync_identity::auth::Authentication;

use super::{HttpState, error_response, request_info};
use crate::errors::code;

/// The content type of a name an export job writes; `None` for any other name.
fn content_type(file: &str) -> Option<&'static str> {
    let (id, extension) = file.split_once('.')?;
    uuid::Uuid::try_parse(id).ok()?;
    match extension {
        "parquet" => Some("application/vnd.apache.parquet"),
        "csv" => Some("text/csv; charset=utf-8"),
        _ => None,
    }
}

pub(crate) async fn download(
    State(state): State<HttpState>,
    Path(file): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let Some(content_type) = content_type(&file) else {
        return error_response(StatusCode::NOT_FOUND, code::NOT_FOUND, "no such export");
    };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let peer = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    let info = request_info(&headers, peer);
    let caller = match state.app.authenticate(authorization, info.client.ip.as_deref()).await {
        Authentication::User(caller) => caller,
        _ => {
            return error_response(
                StatusCode::UNAUTHORIZED,
                code::UNAUTHENTICATED,
                "exports are for administrators and auditors",
            );
        }
    };
    match crate::graphql::administers(&state.app, caller, false).await {
        Ok(_) => {}
        Err(crate::errors::ApiError::Forbidden(why)) => return error_response(StatusCode::FORBIDDEN, code::FORBIDDEN, &why),
        Err(_) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::INTERNAL,
                "the caller's roles cannot be read",
            );
        }
    }
    let path = state.app.exports.join(&file);
    let opened = tokio::fs::File::open(&path).await;
    let file_handle = match opened {
        Ok(handle) => handle,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return error_response(StatusCode::NOT_FOUND, code::NOT_FOUND, "no such export (or not finished yet)");
        }
        Err(error) => {
            tracing::error!(file = %path.display(), error = %error, "An export cannot be read.");
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, "the export cannot be read");
        }
    };
    let length = file_handle.metadata().await.map(|m| m.len()).ok();
    let mut response = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(file_handle)));
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        response_headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Some(length) = length {
        response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::content_type;

    #[test]
    fn only_the_names_an_export_job_writes_are_served() {
        assert!(content_type("0193a6f2-8a4b-7c3d-9e5f-0123456789ab.parquet").is_some());
        assert!(content_type("0193a6f2-8a4b-7c3d-9e5f-0123456789ab.csv").is_some());
        for name in [
            "..",
            "../cloudsync.db",
            "master-key",
            "x.parquet",
            "0193a6f2-8a4b-7c3d-9e5f-0123456789ab.db",
            ".0193a6f2-8a4b-7c3d-9e5f-0123456789ab.parquet.x.partial",
        ] {
            assert!(content_type(name).is_none(), "{name}");
        }
    }
}
