//! The errors a chat request can end in, and their mapping to the protocol's error codes.

use chat_protocol::v1::{self, ErrorCode};

/// Why a client request failed. Converted to `v1::Error` at the session edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The request is malformed or a field is out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The request needs a logged-in session.
    #[error("log in first")]
    NotAuthenticated,
    /// Wrong username, password or token.
    #[error("invalid username or credentials")]
    InvalidCredentials,
    /// Register: the name is taken.
    #[error("username {0} is taken")]
    UsernameTaken(String),
    /// A user or group name breaks the naming rules.
    #[error("invalid name {0:?}: use 1 to 32 characters of A-Z a-z 0-9 _ . -")]
    InvalidName(String),
    /// The target does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Only members may do this.
    #[error("not a member of group {0}")]
    NotAMember(String),
    /// Create group: the name is taken.
    #[error("group {0} already exists")]
    AlreadyExists(String),
    /// Valid request, wrong moment.
    #[error("{0}")]
    Unexpected(String),
    /// The connection sends faster than its limit.
    #[error("too many requests: at most {0} per second, retry later")]
    RateLimited(u32),
    /// Too many failed logins for the account or from the client address, or too many
    /// registrations from the address: held back for `retry_after_ms`.
    #[error("too many attempts; try again in {} s", retry_after_ms.div_ceil(1000))]
    TooManyAttempts {
        /// How long until the next attempt may be made.
        retry_after_ms: u64,
    },
    /// Send private: the recipient does not accept messages from this sender (contacts
    /// only, or a block: the same answer for both).
    #[error("{0} does not accept messages from you")]
    NotAllowed(String),
    /// Groups: the role does not allow it, the group is private, or a ban.
    #[error("{0}")]
    Forbidden(String),
    /// A message change by someone who may not make it (not the author).
    #[error("{0}")]
    NotAuthor(String),
    /// An edit after the edit window.
    #[error("the message is older than the edit window of {0} s")]
    EditWindowClosed(u64),
    /// A file over the node's size limit (in bytes).
    #[error("the file is larger than this node's limit of {0} bytes")]
    FileTooLarge(u64),
    /// The bytes of an upload are not those announced.
    #[error("{0}")]
    HashMismatch(String),
    /// An upload would take its user over the quota (in bytes).
    #[error("this upload would take you over your quota of {0} bytes of new files")]
    QuotaExceeded(u64),
    /// Login: an operator disabled the account.
    #[error("this account is disabled")]
    AccountDisabled,
    /// The request cannot be served now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// An internal failure (storage, bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// An error another node answered with, as it sent it.
    #[error("{message}")]
    Peer {
        /// Its code.
        code: ErrorCode,
        /// Its text.
        message: String,
    },
}

/// Result alias for chat requests.
pub type ChatResult<T> = Result<T, ChatError>;

impl ChatError {
    /// The protocol code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::NotAuthenticated => ErrorCode::NotAuthenticated,
            Self::InvalidCredentials => ErrorCode::InvalidCredentials,
            Self::UsernameTaken(_) => ErrorCode::UsernameTaken,
            Self::InvalidName(_) => ErrorCode::InvalidName,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::NotAMember(_) => ErrorCode::NotAMember,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::Unexpected(_) => ErrorCode::Unexpected,
            Self::RateLimited(_) | Self::TooManyAttempts { .. } => ErrorCode::RateLimited,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::AccountDisabled => ErrorCode::AccountDisabled,
            Self::NotAllowed(_) => ErrorCode::NotAllowed,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotAuthor(_) => ErrorCode::NotAuthor,
            Self::EditWindowClosed(_) => ErrorCode::EditWindowClosed,
            Self::FileTooLarge(_) => ErrorCode::FileTooLarge,
            Self::HashMismatch(_) => ErrorCode::HashMismatch,
            Self::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            Self::Internal(_) => ErrorCode::Internal,
            Self::Peer { code, .. } => *code,
        }
    }

    /// An error received from another node.
    pub fn from_proto(e: v1::Error) -> Self {
        Self::Peer {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
            message: e.message,
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> v1::Error {
        v1::Error {
            code: self.code() as i32,
            message: self.to_string(),
            retry_after_ms: match self {
                Self::TooManyAttempts { retry_after_ms } => *retry_after_ms,
                _ => 0,
            },
        }
    }
}
