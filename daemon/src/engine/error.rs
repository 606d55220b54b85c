//! [`EngineError`], what every [`crate::handle::EngineHandle`] call fails with, and
//! [`ErrorCode`], the gRPC code each maps to (`control::engine_status` does the mapping).

use std::path::PathBuf;

use blobsync_shared::{BlobId, Namespace};

use crate::remote::RemoteError;
use crate::store::StoreError;

/// Which gRPC code an [`EngineError`] maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Bad input (ids, ranges, flags, paths).
    InvalidArgument,
    /// No such blob.
    NotFound,
    /// The blob already exists.
    AlreadyExists,
    /// The remote is down or refused us; try later.
    Unavailable,
    /// The blob's status does not allow it (e.g. retry on a synced blob).
    FailedPrecondition,
    /// A bug or local disk trouble.
    Internal,
    /// The daemon may not read a file it was asked to.
    PermissionDenied,
}

/// Errors of [`EngineHandle`](crate::handle::EngineHandle) calls; messages are for humans.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input.
    #[error("{0}")]
    InvalidArgument(String),
    /// The blob's status does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The remote is needed and not usable.
    #[error("{0}")]
    Unavailable(String),
    /// A store error (NotFound/AlreadyExists/illegal transition/internal).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A remote error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Local file trouble.
    #[error("local i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The file to put cannot be opened or read.
    #[error(
        "the daemon cannot read {}: {error}; the file must exist and be readable by the daemon's user",
        path.display()
    )]
    Source {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The daemon is shutting down.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// No such blob in the namespace asked for, but the id exists in others.
    #[error(
        "no blob {id} in namespace {ns}, but there is one in {}: ask for {}/{id} (or -n {})",
        found_in.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
        found_in[0], found_in[0]
    )]
    NotFoundElsewhere {
        /// The namespace asked for.
        ns: Namespace,
        /// The id.
        id: BlobId,
        /// Namespaces holding the id (at least one).
        found_in: Vec<Namespace>,
    },
    /// A put of an id whose delete has not reached the server yet.
    #[error(
        "{ns}/{id} was deleted here and the server has not been told yet: put it again once it \
         has (`blobctl sync --wait` tells it now, when the server is reachable), or use another id"
    )]
    DeletePending {
        /// Namespace.
        ns: Namespace,
        /// Id.
        id: BlobId,
    },
}

impl EngineError {
    /// The gRPC code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            EngineError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            EngineError::Unavailable(_) | EngineError::ShuttingDown => ErrorCode::Unavailable,
            EngineError::Store(StoreError::NotFound { .. })
            | EngineError::NotFoundElsewhere { .. } => ErrorCode::NotFound,
            EngineError::Store(StoreError::AlreadyExists { .. })
            | EngineError::DeletePending { .. } => ErrorCode::AlreadyExists,
            EngineError::Store(StoreError::Illegal(_)) => ErrorCode::FailedPrecondition,
            EngineError::Store(StoreError::Closed) => ErrorCode::Unavailable,
            EngineError::Store(_) | EngineError::Io(_) => ErrorCode::Internal,
            EngineError::Source { error, .. } => match error.kind() {
                std::io::ErrorKind::NotFound => ErrorCode::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                _ => ErrorCode::InvalidArgument,
            },
            EngineError::Remote(e) => match e {
                RemoteError::NotFound => ErrorCode::NotFound,
                RemoteError::Conflict => ErrorCode::AlreadyExists,
                RemoteError::BadFlags(_) | RemoteError::RangeNotSatisfiable => {
                    ErrorCode::InvalidArgument
                }
                RemoteError::TooLarge | RemoteError::QuotaExceeded => ErrorCode::FailedPrecondition,
                _ => ErrorCode::Unavailable,
            },
        }
    }
}
