//! Where served files come from. The server asks a [`FileSource`] for each request, so the
//! boot service can hand out generated files (a per-client iPXE script) next to files on disk.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use tokio::io::AsyncRead;

use super::path::BootPath;

/// A file ready to be sent.
pub struct OpenedFile {
    /// The size in bytes when known before sending (answers the tsize option).
    pub size: Option<u64>,
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
}

impl OpenedFile {
    /// A file generated in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        OpenedFile {
            size: Some(bytes.len() as u64),
            reader: Box::new(io::Cursor::new(bytes)),
        }
    }
}

impl std::fmt::Debug for OpenedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedFile")
            .field("size", &self.size)
            .finish()
    }
}

/// Why a file cannot be served. Each maps to a TFTP error code; messages go to the client, so
/// they name the requested path (which the client sent) and never the server's root.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("file not found")]
    NotFound,
    #[error("access denied: {0}")]
    Denied(String),
    /// The signed chain's "no reimage armed" answer (`dhcp::DECLINE_FILE`).
    #[error("no reimage is armed for this machine: boot the local disk")]
    Declined,
    #[error("cannot read the file: {0}")]
    Io(#[source] io::Error),
}

pub type OpenFuture<'a> = Pin<Box<dyn Future<Output = Result<OpenedFile, OpenError>> + Send + 'a>>;

/// A source of files for the TFTP server. `path` has already been normalised (no `..`, no
/// root); `client` lets a source answer per client (e.g. a generated script).
pub trait FileSource: Send + Sync + 'static {
    fn open<'a>(&'a self, path: &'a BootPath, client: SocketAddr) -> OpenFuture<'a>;
}

/// Files under a directory, confined to it: the resolved path (all symlinks followed) must
/// still be inside the root, and must be a regular file.
#[derive(Debug, Clone)]
pub struct FsSource {
    root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FsSourceError {
    #[error("TFTP root {path}: {source}; create the directory or point --tftp-root at one")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("TFTP root {0} is not a directory")]
    NotADirectory(PathBuf),
}

impl FsSource {
    /// Serves files under `root` (canonicalised once here, so a symlinked root works and every
    /// later check compares real paths).
    pub fn new(root: impl AsRef<Path>) -> Result<Self, FsSourceError> {
        let root = root.as_ref();
        let canonical = std::fs::canonicalize(root).map_err(|source| FsSourceError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        if !canonical.is_dir() {
            return Err(FsSourceError::NotADirectory(canonical));
        }
        Ok(FsSource { root: canonical })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves `path` to a real file inside the root.
    pub async fn resolve(&self, path: &BootPath) -> Result<PathBuf, OpenError> {
        let joined = self.root.join(path.to_relative_path_buf());
        let real = match tokio::fs::canonicalize(&joined).await {
            Ok(real) => real,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OpenError::NotFound),
            // ENOTDIR: a component is a file ("file.bin/x").
            Err(e) if e.raw_os_error() == Some(20) => return Err(OpenError::NotFound),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(OpenError::Denied("permission denied".into()));
            }
            Err(e) => return Err(OpenError::Io(e)),
        };
        if !real.starts_with(&self.root) {
            return Err(OpenError::Denied(
                "the path leads outside the boot root (symlink)".into(),
            ));
        }
        Ok(real)
    }
}

impl FileSource for FsSource {
    fn open<'a>(&'a self, path: &'a BootPath, _client: SocketAddr) -> OpenFuture<'a> {
        Box::pin(async move {
            let real = self.resolve(path).await?;
            let file = match tokio::fs::File::open(&real).await {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OpenError::NotFound),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(OpenError::Denied("permission denied".into()));
                }
                Err(e) => return Err(OpenError::Io(e)),
            };
            // A directory swapped for a symlink between resolve and open would be followed by
            // open; the kernel's view of the open handle tells where it really landed.
            if let Some(landed) = opened_path(&file)
                && !landed.starts_with(&self.root)
            {
                return Err(OpenError::Denied(
                    "the path leads outside the boot root (symlink)".into(),
                ));
            }
            // Checked on the open handle, so a swap after resolve cannot turn this into a
            // directory or device read.
            let meta = file.metadata().await.map_err(OpenError::Io)?;
            if !meta.is_file() {
                return Err(OpenError::Denied("not a regular file".into()));
            }
            Ok(OpenedFile {
                size: Some(meta.len()),
                reader: Box::new(file),
            })
        })
    }
}

/// The path the kernel opened, where /proc is available (Linux); None elsewhere.
fn opened_path(file: &tokio::fs::File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}
