//! The multicast form of a verified image: wimlib's pipable WIM (what `udp-receiver` can feed
//! to `wimlib-imagex apply -`), made from the verified bytes by this process and verified
//! itself before any session sends it, with the image's UEFI boot manager beside it (what a
//! receiving machine checks against its firmware before the first write).
//!
//! Files, all under the boot root's `images/` and only ever renamed into place once complete:
//! `<digest>-<index>.stream.wim`, `<digest>-<index>.bootmgfw.efi`, and last
//! `<digest>-<index>.stream.json`
//! ([`StreamFacts`]): a session is offered only when that file says what the others are.
//! Each process that serves images (the operator, each boot pod) makes its own; wimlib gives
//! each export a new GUID, so their sha256s differ and each tells its machines its own.

use std::path::{Path, PathBuf};

use recast_core::boot_manager::UEFI_BOOT_MANAGER;
use serde::{Deserialize, Serialize};

use super::fetch::ArtifactStore;

/// What a session of this image sends, and what the receivers check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamFacts {
    /// The WIM image index exported (the stream holds only it, as its image 1).
    pub source_index: u32,
    pub sha256: String,
    pub size: u64,
    /// The image's expanded size ("Total Bytes").
    pub image_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_manager: Option<BlobFacts>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobFacts {
    pub sha256: String,
    pub size: u64,
}

/// Per WIM and image index: two GoldenImages may name the same WIM with different indexes.
pub fn stream_path(root: &Path, digest: &str, index: u32) -> PathBuf {
    root.join("images")
        .join(format!("{digest}-{index}.stream.wim"))
}

/// Served by the boot service (`/artifacts/images/<digest>-<index>.bootmgfw.efi`).
pub fn boot_manager_name(digest: &str, index: u32) -> String {
    format!("{digest}-{index}.bootmgfw.efi")
}

fn facts_path(root: &Path, digest: &str, index: u32) -> PathBuf {
    root.join("images")
        .join(format!("{digest}-{index}.stream.json"))
}

/// The facts of a stream that is in place for image `index` of WIM `digest`; None otherwise.
pub fn read(root: &Path, digest: &str, index: u32) -> Option<StreamFacts> {
    let facts: StreamFacts =
        serde_json::from_slice(&std::fs::read(facts_path(root, digest, index)).ok()?).ok()?;
    let size = std::fs::metadata(stream_path(root, digest, index))
        .ok()?
        .len();
    (facts.source_index == index && size == facts.size).then_some(facts)
}

/// Why the pipable form could not be made or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "wimlib-imagex is not installed on this boot server (Debian/Ubuntu: apt install wimtools): multicast sessions need it to make the pipable form of each image; machines download over HTTP meanwhile"
    )]
    NoWimlib,
    #[error("{0}")]
    Tool(String),
    #[error("the pipable form does not verify: {0}")]
    Mismatch(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// Makes (once) and verifies the pipable form of the verified image `digest`, image `index`.
pub async fn ensure(
    store: &ArtifactStore,
    digest: &str,
    index: u32,
) -> Result<StreamFacts, StreamError> {
    if let Some(f) = read(&store.root, digest, index) {
        return Ok(f);
    }
    let source = store.image(digest);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| StreamError::Io {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    tokio::fs::create_dir_all(&store.staging)
        .await
        .map_err(io(&store.staging))?;
    let part = store
        .staging
        .join(format!("{digest}-{index}.stream.wim.part"));
    let _ = tokio::fs::remove_file(&part).await;
    wimlib(&[
        "export",
        &source.to_string_lossy(),
        &index.to_string(),
        &part.to_string_lossy(),
        "--pipable",
    ])
    .await?;

    // The pipable form is checked on its own bytes before anything sends it: wimlib's magic,
    // every resource's hash (verify), and the same image (its counts and size) as the
    // verified WIM's image `index`.
    let mut magic = [0u8; 8];
    {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(&part).await.map_err(io(&part))?;
        f.read_exact(&mut magic).await.map_err(io(&part))?;
    }
    if &magic != b"WLPWM\0\0\0" {
        return Err(StreamError::Mismatch(
            "the export is not a pipable WIM (no WLPWM magic)".into(),
        ));
    }
    wimlib(&["verify", &part.to_string_lossy()]).await?;
    let want = image_info(&source, index).await?;
    let got = image_info(&part, 1).await?;
    if want != got {
        return Err(StreamError::Mismatch(format!(
            "image {index} of the verified WIM is {want:?}, the pipable form's image is {got:?}"
        )));
    }
    let image_bytes = want.total_bytes;

    // The boot manager, from the verified WIM (absent: a BIOS-only image).
    let extract_dir = store.staging.join(format!("{digest}-{index}.bootmgr"));
    let _ = tokio::fs::remove_dir_all(&extract_dir).await;
    let extracted = tokio::process::Command::new("wimlib-imagex")
        .args([
            "extract",
            &source.to_string_lossy(),
            &index.to_string(),
            &format!("/{UEFI_BOOT_MANAGER}"),
            &format!("--dest-dir={}", extract_dir.display()),
            "--no-acls",
            "--no-attributes",
        ])
        .env("WIMLIB_IMAGEX_IGNORE_CASE", "1")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| StreamError::Tool(format!("wimlib-imagex extract: {e}")))?;
    let absent = String::from_utf8_lossy(&extracted.stderr).contains("does not exist");
    if !extracted.status.success() && !absent {
        // Only an image without one is told "none": a UEFI machine would be refused for it.
        let _ = tokio::fs::remove_dir_all(&extract_dir).await;
        return Err(StreamError::Tool(format!(
            "wimlib-imagex extract of the boot manager failed ({}): {}",
            extracted.status,
            String::from_utf8_lossy(&extracted.stderr).trim()
        )));
    }
    let boot_manager = if extracted.status.success() {
        let file = std::fs::read_dir(&extract_dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path())
            .ok_or_else(|| StreamError::Tool("wimlib-imagex extracted nothing".into()))?;
        let bytes = tokio::fs::read(&file).await.map_err(io(&file))?;
        let dest = store
            .root
            .join("images")
            .join(boot_manager_name(digest, index));
        write_atomically(&dest, &bytes).await?;
        Some(BlobFacts {
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
        })
    } else {
        None
    };
    let _ = tokio::fs::remove_dir_all(&extract_dir).await;

    let size = tokio::fs::metadata(&part).await.map_err(io(&part))?.len();
    let sha256 = {
        let part = part.clone();
        tokio::task::spawn_blocking(move || super::fetch::file_digest(&part))
            .await
            .map_err(|e| StreamError::Tool(e.to_string()))?
            .map_err(StreamError::Tool)?
    };
    let sha256 = sha256.sha256;
    let dest = stream_path(&store.root, digest, index);
    store
        .place(&part, dest)
        .await
        .map_err(|e| StreamError::Tool(e.to_string()))?;
    let facts = StreamFacts {
        source_index: index,
        sha256,
        size,
        image_bytes,
        boot_manager,
    };
    let json = serde_json::to_vec_pretty(&facts).expect("plain data");
    write_atomically(&facts_path(&store.root, digest, index), &json).await?;
    Ok(facts)
}

/// What `wimlib-imagex info WIM INDEX` says of one image.
#[derive(Debug, PartialEq, Eq)]
struct ImageInfo {
    total_bytes: u64,
    files: u64,
    directories: u64,
}

async fn image_info(wim: &Path, index: u32) -> Result<ImageInfo, StreamError> {
    let out = wimlib(&["info", &wim.to_string_lossy(), &index.to_string()]).await?;
    let field = |name: &str| -> Result<u64, StreamError> {
        out.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().parse::<u64>().ok())?
            })
            .ok_or_else(|| {
                StreamError::Tool(format!(
                    "wimlib-imagex info {} {index} shows no {name}",
                    wim.display()
                ))
            })
    };
    Ok(ImageInfo {
        total_bytes: field("Total Bytes")?,
        files: field("File Count")?,
        directories: field("Directory Count")?,
    })
}

async fn wimlib(args: &[&str]) -> Result<String, StreamError> {
    let out = tokio::process::Command::new("wimlib-imagex")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StreamError::NoWimlib,
            _ => StreamError::Tool(format!("wimlib-imagex: {e}")),
        })?;
    if !out.status.success() {
        return Err(StreamError::Tool(format!(
            "wimlib-imagex {} failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

async fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), StreamError> {
    let tmp = dest.with_extension("tmp");
    let err = |e: std::io::Error| StreamError::Io {
        path: dest.display().to_string(),
        message: e.to_string(),
    };
    tokio::fs::write(&tmp, bytes).await.map_err(err)?;
    tokio::fs::rename(&tmp, dest).await.map_err(err)
}
