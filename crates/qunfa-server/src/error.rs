//! One error type for every handler: a status, a stable code, messages in
//! English and Chinese, a hint, and details. A 500 logs its cause and returns a
//! generic body.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use qunfa_core::{preflight::Verdict, Code};
use qunfa_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::wire::VerdictWire;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    pub details: Vec<serde_json::Value>,
    pub retry_after: Option<u64>,
    /// A specific Chinese message; the code's default otherwise.
    pub message_zh: Option<String>,
    /// Where in the request's text the problem is, with a specific hint.
    pub pointed: Option<Box<Pointed>>,
}

/// A position in a text the request gave (characters from 0) and a hint for it.
#[derive(Debug)]
pub struct Pointed {
    pub position: usize,
    pub hint: String,
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `QF-LIMIT-RECIPIENTS`.
    pub code: String,
    pub message: String,
    pub message_zh: String,
    pub hint: String,
    /// For errors in a text the request gave (an audience expression): where,
    /// in characters from 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    #[schema(value_type = Vec<Object>)]
    pub details: Vec<serde_json::Value>,
}

/// The HTTP status a code is answered with.
pub fn status_of(code: Code) -> StatusCode {
    use Code::*;
    match code {
        BadJson
        | BadRequest
        | BadCursor
        | InvalidName
        | InvalidKind
        | InvalidRole
        | InvalidExternalId
        | InvalidAttribute
        | InvalidEmail
        | InvalidPhone
        | InvalidUrl
        | InvalidChannel
        | InvalidTagPath
        | TagTooDeep
        | InvalidDepartment
        | InvalidContent
        | TemplateSyntax
        | AudienceInvalid
        | ImportFormat
        | TextEmpty
        | AudienceSyntax
        | AudienceUnknownTag
        | AudienceUnknownDepartment
        | AudienceUnknownAttribute
        | AudienceUnknownSegment
        | ChannelSettings
        | InvalidFallback
        | SafetyText
        | VerificationCode
        | LoginCode
        | InvalidLogin
        | InvalidReviewChain
        | LinkInvalid
        | ConversionInvalid
        | ReportSegment
        | AbInvalid => StatusCode::BAD_REQUEST,
        Unauthenticated | LoginFailed => StatusCode::UNAUTHORIZED,
        LoginLocked => StatusCode::TOO_MANY_REQUESTS,
        Forbidden | SelfApproval | ApprovalStage | CsrfToken => StatusCode::FORBIDDEN,
        NotFound | MediaNotFound | UnsubscribeLink => StatusCode::NOT_FOUND,
        Conflict | Duplicate | DuplicateClientMsgId | ApprovalDuplicate | LoginTaken | AbNoWinner => {
            StatusCode::CONFLICT
        }
        PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: status_of(code),
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
            message_zh: None,
            pointed: None,
        }
    }
    /// Points at a position of the request's text, with a specific hint.
    pub fn at(mut self, position: usize, hint: impl Into<String>) -> Self {
        self.pointed = Some(Box::new(Pointed { position, hint: hint.into() }));
        self
    }
    pub fn code(code: Code) -> Self {
        Self::new(code, code.message_en())
    }
    pub fn with_details(mut self, details: Vec<serde_json::Value>) -> Self {
        self.details = details;
        self
    }
    pub fn not_found() -> Self {
        Self::code(Code::NotFound)
    }
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::code(Code::Internal)
    }
    /// A send refused by preflight: the first blocking verdict's code, every
    /// verdict in the details.
    /// `now` (the server's clock) turns a `clears_at` into `Retry-After`.
    pub fn from_verdicts(verdicts: &[Verdict], now: i64) -> Self {
        let first =
            verdicts.iter().find(|v| v.severity == qunfa_core::preflight::Severity::Block).unwrap_or(&verdicts[0]);
        let mut e = Self::new(first.code, first.message.clone());
        e.message_zh = Some(first.message_zh.clone());
        e.status = StatusCode::UNPROCESSABLE_ENTITY;
        e.details = verdicts.iter().map(|v| serde_json::to_value(VerdictWire::from(v)).unwrap_or_default()).collect();
        if let Some(clears_at) = first.clears_at {
            let secs = (clears_at - now).max(0) / 1000;
            e.retry_after = Some(secs as u64);
        }
        e
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found(),
            StoreError::Rejected { code, message, details } => {
                ApiError::new(code, message).with_details(details.into_iter().map(serde_json::Value::String).collect())
            }
            e if e.is_transient() => {
                tracing::warn!(error = %e, "database unavailable");
                let mut err = ApiError::code(Code::Unavailable);
                err.retry_after = Some(1);
                err
            }
            e => ApiError::internal(&e),
        }
    }
}

impl From<Code> for ApiError {
    fn from(code: Code) -> Self {
        ApiError::code(code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
                message_zh: self.message_zh.unwrap_or_else(|| self.code.message_zh().to_owned()),
                hint: self.pointed.as_ref().map_or_else(|| self.code.hint().to_owned(), |p| p.hint.clone()),
                position: self.pointed.as_ref().map(|p| p.position),
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
