//! The boot root as TFTP serves it. Most names are files under `--boot-root`; a few are
//! answered by the boot service itself, because the signed chain's GRUB reads everything over
//! TFTP (Debian 12's signed GRUB has no HTTP):
//!
//! - `grub/grub.cfg`: the same for every machine; it sources the machine's own file below;
//! - `grub/recast/<mac>.cfg`: what this MAC boots, decided as `/boot/<mac>` decides it for
//!   iPXE (`BootHttp::script_for`): the armed try's kernel and initrd, or the local disk;
//! - `sb/boot-local-disk.efi` (`dhcp::DECLINE_FILE`): never a file. An unarmed signed-chain
//!   machine is offered it so that its firmware gets an error at once and moves on to the next
//!   boot option (the disk) instead of waiting out a silent DHCP exchange.
//!
//! Like `/boot/<mac>`, nothing here is secret: anyone may ask for any MAC's file. It names the
//! try's URL; only the claim binds a try to a machine (docs/boot.md).

use std::net::SocketAddr;
use std::sync::Arc;

use super::dhcp::DECLINE_FILE;
use super::http::{BootHttp, ScriptFor};
use super::render::RenderError;
use super::tftp::{BootPath, FileSource, FsSource, OpenError, OpenedFile};
use crate::store::arming::normalize_mac;
use crate::store::{Backend, BootIntents};

/// What a TFTP path names (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TftpName {
    /// `grub/grub.cfg`.
    GrubRoot,
    /// `grub/recast/<mac>.cfg`, the MAC normalised.
    GrubPerMac(String),
    /// `grub/recast/<anything else>`: not a MAC GRUB would send.
    GrubNotAMac,
    /// The decline name.
    Decline,
    /// A file under the boot root.
    File,
}

pub fn classify(path: &BootPath) -> TftpName {
    match path.components() {
        [a, b] if a == "grub" && b == "grub.cfg" => TftpName::GrubRoot,
        [a, b, file] if a == "grub" && b == "recast" => file
            .strip_suffix(".cfg")
            .and_then(normalize_mac)
            .map_or(TftpName::GrubNotAMac, TftpName::GrubPerMac),
        _ if path.as_slash_path() == DECLINE_FILE => TftpName::Decline,
        _ => TftpName::File,
    }
}

/// The boot root, with the generated names answered by the boot service.
pub struct BootRootSource<B> {
    pub files: FsSource,
    pub boot: Arc<BootHttp<B>>,
}

impl<B: Backend + BootIntents> BootRootSource<B> {
    /// GRUB's configuration for `mac`. Errors the client can act on (not ready yet, rate
    /// limited) become TFTP errors: GRUB's `source` then fails, and grub/grub.cfg goes on to
    /// leave the network boot.
    async fn per_mac(&self, mac: &str) -> Result<String, OpenError> {
        let rendered = match self.boot.script_for(mac).await {
            ScriptFor::RateLimited { .. } => {
                return Err(OpenError::Denied(
                    "too many boot requests for this MAC address; retry later".into(),
                ));
            }
            ScriptFor::NotReady(why) => {
                return Err(OpenError::Denied(format!(
                    "the boot service is starting ({why}); retry shortly"
                )));
            }
            // Not ours: GRUB goes on as if nothing were there.
            ScriptFor::Ignore => return Err(OpenError::NotFound),
            ScriptFor::Local { who, .. } => self.boot.renderer.grub_local(&who),
            // WDS endpoints are referred to the WDS server by DHCP; one that reaches GRUB
            // anyway boots its disk.
            ScriptFor::Wds {
                namespace, name, ..
            } => self
                .boot
                .renderer
                .grub_local(&format!("{namespace}/{name}")),
            ScriptFor::Imaging(intent) => {
                let view = self.boot.view(&intent);
                let body = self
                    .boot
                    .renderer
                    .grub_imaging(self.boot.config.imaging, &view);
                tracing::info!(
                    endpoint = %intent.key(),
                    attempt = %intent.attempt_id,
                    try_number = intent.try_number,
                    "served the GRUB imaging configuration"
                );
                body
            }
        };
        rendered.map_err(broken)
    }
}

fn broken(e: RenderError) -> OpenError {
    OpenError::Io(std::io::Error::other(e.to_string()))
}

impl<B: Backend + BootIntents> FileSource for BootRootSource<B> {
    fn open<'a>(
        &'a self,
        path: &'a BootPath,
        client: SocketAddr,
    ) -> super::tftp::source::OpenFuture<'a> {
        Box::pin(async move {
            match classify(path) {
                TftpName::GrubRoot => {
                    let body = self.boot.renderer.grub_root().map_err(broken)?;
                    Ok(OpenedFile::from_bytes(body.into_bytes()))
                }
                TftpName::GrubPerMac(mac) => Ok(OpenedFile::from_bytes(
                    self.per_mac(&mac).await?.into_bytes(),
                )),
                TftpName::GrubNotAMac => Err(OpenError::NotFound),
                TftpName::Decline => Err(OpenError::Declined),
                TftpName::File => self.files.open(path, client).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tftp::path::normalize;

    fn name(p: &str) -> TftpName {
        classify(&normalize(p).unwrap())
    }

    #[test]
    fn the_generated_names_and_everything_else() {
        assert_eq!(name("/grub/grub.cfg"), TftpName::GrubRoot);
        assert_eq!(name("grub/grub.cfg"), TftpName::GrubRoot);
        // GRUB sends $net_default_mac lower-case with colons; any spelling of a MAC works.
        assert_eq!(
            name("/grub/recast/52:54:00:88:00:01.cfg"),
            TftpName::GrubPerMac("52:54:00:88:00:01".into())
        );
        assert_eq!(
            name("grub/recast/52-54-00-88-00-0A.cfg"),
            TftpName::GrubPerMac("52:54:00:88:00:0a".into())
        );
        assert_eq!(name("grub/recast/not-a-mac.cfg"), TftpName::GrubNotAMac);
        assert_eq!(name("grub/recast/52:54:00:88:00:01"), TftpName::GrubNotAMac);
        assert_eq!(name("sb/boot-local-disk.efi"), TftpName::Decline);
        assert_eq!(name("/sb/boot-local-disk.efi"), TftpName::Decline);
        // GRUB's module lists and the per-platform config are not generated: file lookups,
        // answered "not found" at once when absent.
        for f in [
            "grub/x86_64-efi/command.lst",
            "grub/x86_64-efi/grub.cfg",
            "sb/shimx64.efi",
            "sb/grubx64.efi",
            "linux/vmlinuz",
            "grub/grub.cfg.bak",
            "grub/recast/52:54:00:88:00:01.cfg/x",
        ] {
            assert_eq!(name(f), TftpName::File, "{f}");
        }
    }
}
