//! Files that hold secrets (the embedded store's `recast.db` with BMC passwords, the gateway's
//! `gateway.db` with token hashes and replay marks) and the data directory that holds them:
//! owner-only, whatever the process umask says.

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// SQLite's companions of a database file; SQLite creates them with the main file's mode, but
/// ones left by an older version keep theirs.
pub const SQLITE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Creates `dir` (and parents) and makes it 0700. A directory this process does not own (a
/// volume's mount point, group-owned through fsGroup) keeps its mode, with a warning: the files
/// inside are 0600 either way.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot make the data directory owner-only (0700); its secret files are 0600 regardless");
    }
    Ok(())
}

/// Creates a database file 0600 before SQLite opens it (SQLite would create it 0644 under the
/// usual umask), and brings an existing one and its side files to 0600.
pub fn private_db_file(path: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let name = path.as_os_str().to_owned();
    for side in SQLITE_SIDE_FILES {
        let mut p = name.clone();
        p.push(side);
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_dirs_are_owner_only_whatever_was_there() {
        let base = std::env::temp_dir().join(format!("recast-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("data");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("x.db");
        private_db_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        // An older install's world-readable files are tightened.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let wal = dir.join("x.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        private_db_file(&db).unwrap();
        assert_eq!((mode(&dir), mode(&db), mode(&wal)), (0o700, 0o600, 0o600));
        // Existing contents are kept.
        std::fs::write(&db, b"keep").unwrap();
        private_db_file(&db).unwrap();
        assert_eq!(std::fs::read(&db).unwrap(), b"keep");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
