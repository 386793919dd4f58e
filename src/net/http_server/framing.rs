//! Our `Response` turned into the head ureq-proto frames, and the few canned
//! pieces the connection driver feeds ureq-proto.

use std::fmt;

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, StatusCode, Version};
use ureq_proto::server::state::{ProvideResponse, RecvBody};
use ureq_proto::server::{RecvRequestResult, Reply};

use super::{Body, Response};

pub(super) fn body_too_large() -> Response {
    Response::error(
        413,
        "request_body_too_large",
        "the request body is larger than the server accepts",
    )
}

/// A Reply in ProvideResponse state for a canned `GET /`; see
/// [`Conn::answer_response_and_close`].
pub(super) fn canned_reply() -> Option<Reply<ProvideResponse>> {
    let mut reply = Reply::new().ok()?;
    let (_, request) = reply.try_request(b"GET / HTTP/1.1\r\n\r\n").ok()?;
    request?;
    match reply.proceed()? {
        RecvRequestResult::ProvideResponse(r) => Some(r),
        _ => None,
    }
}

/// Feeds ureq-proto's chunked reader a last-chunk; see [`Conn::recv_body`].
pub(super) fn end_chunked_body(reply: &mut Reply<RecvBody>) {
    const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
    let mut used = 0;
    let mut sink = [0u8; 1];
    while !reply.is_ended() && used < LAST_CHUNK.len() {
        match reply.read(&LAST_CHUNK[used..], &mut sink) {
            Ok((0, _)) | Err(_) => return,
            Ok((i, _)) => used += i,
        }
    }
}

/// Why a handler's response cannot be put on the wire.
#[derive(Debug)]
pub(super) enum Unsendable {
    Status(u16),
    Header(String),
}

impl fmt::Display for Unsendable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsendable::Status(s) => write!(f, "status {s} is not a final status code"),
            Unsendable::Header(name) => write!(f, "header {name:?} is not a valid header"),
        }
    }
}

/// Turns our response into the head ureq-proto frames plus the body to send.
pub(super) fn into_http(
    response: Response,
    closing: bool,
) -> Result<(http::Response<()>, Body), Unsendable> {
    let status = StatusCode::from_u16(response.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or(Unsendable::Status(response.status))?;
    let no_body = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let mut builder = http::Response::builder()
        .status(status)
        .version(Version::HTTP_11);
    let Some(headers) = builder.headers_mut() else {
        return Err(Unsendable::Status(response.status));
    };
    let body = response.body;
    let keep_length = matches!(body, Body::Stream(_)) || status == StatusCode::NOT_MODIFIED;
    for (name, value) in &response.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return Err(Unsendable::Header(name.clone()));
        };
        // The server frames the body; the handler's framing headers would contradict it.
        if name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && !keep_length) {
            continue;
        }
        headers.append(name, value);
    }
    if closing && !headers.contains_key(CONNECTION) {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let body = if no_body {
        Body::Empty
    } else {
        match body {
            Body::Empty => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(0u32));
                Body::Empty
            }
            Body::Bytes(b) => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(b.len()));
                Body::Bytes(b)
            }
            Body::Stream(s) => Body::Stream(s),
        }
    };
    builder
        .body(())
        .map_err(|_| Unsendable::Status(response.status))
        .map(|head| (head, body))
}
