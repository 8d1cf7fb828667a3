//! Notifications for the people who must act: a quarantined machine, a refused request, a power
//! cycle that needs a hand. The default sink writes them to the log at warn level (where an
//! alerting pipeline picks them up); a webhook or chat sink plugs in behind the same trait.

use crate::store::Key;
use recast_core::lifecycle::{Notice, NoticeType};

pub trait Notifier: Send + Sync + 'static {
    /// Called for every Warning notice, after it was recorded as an event.
    fn notify(&self, endpoint: &Key, notice: &Notice);
}

/// Logs warnings as structured records (never secrets: notices carry names, ids and reasons).
pub struct LogNotifier;

impl Notifier for LogNotifier {
    fn notify(&self, endpoint: &Key, notice: &Notice) {
        if notice.type_ == NoticeType::Warning {
            tracing::warn!(endpoint = %endpoint, reason = %notice.reason, "{}", notice.message);
        }
    }
}
