//! What a decision tells people: an event for the audit trail. Its own module because every
//! decision (lifecycle, update hold, waves) says things, and none of them owns the vocabulary.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeType {
    Normal,
    Warning,
}

/// An event for the audit trail (a Kubernetes Event, or a row in the embedded store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub type_: NoticeType,
    pub reason: String,
    pub message: String,
}
