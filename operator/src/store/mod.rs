//! Where recast's objects live: the embedded SQLite store (default) or Kubernetes.

pub mod embedded;
pub mod private;
