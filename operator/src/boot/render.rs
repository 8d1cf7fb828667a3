//! Renders the boot scripts and imaging files from the tera templates in
//! `operator/templates/boot/`. Rendering is pure: the same inputs give the same bytes, which the
//! golden tests (operator/tests/boot_templates.rs) pin for every boot mode.

use serde::Serialize;
use tera::{Context, Tera};

use crate::store::BootIntent;

const TEMPLATES: &[(&str, &str)] = &[
    (
        "boot.ipxe",
        include_str!("../../templates/boot/boot.ipxe.tera"),
    ),
    (
        "local.ipxe",
        include_str!("../../templates/boot/local.ipxe.tera"),
    ),
    (
        "imaging-winpe.ipxe",
        include_str!("../../templates/boot/imaging-winpe.ipxe.tera"),
    ),
    (
        "imaging-linux.ipxe",
        include_str!("../../templates/boot/imaging-linux.ipxe.tera"),
    ),
    (
        "wds.ipxe",
        include_str!("../../templates/boot/wds.ipxe.tera"),
    ),
    (
        "grub.cfg",
        include_str!("../../templates/boot/grub.cfg.tera"),
    ),
    (
        "local.grub.cfg",
        include_str!("../../templates/boot/local.grub.cfg.tera"),
    ),
    (
        "imaging-linux.grub.cfg",
        include_str!("../../templates/boot/imaging-linux.grub.cfg.tera"),
    ),
    (
        "imaging-winpe.grub.cfg",
        include_str!("../../templates/boot/imaging-winpe.grub.cfg.tera"),
    ),
    (
        "startnet.cmd",
        include_str!("../../templates/boot/startnet.cmd.tera"),
    ),
    (
        "winpeshl.ini",
        include_str!("../../templates/boot/winpeshl.ini.tera"),
    ),
    // The .xml name turns on tera's escaping, so a value can never break out of its element.
    (
        "unattend.xml",
        include_str!("../../templates/boot/unattend.xml.tera"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("boot template {name} is broken: {source}")]
    Template {
        name: &'static str,
        source: tera::Error,
    },
    #[error("cannot render {name}: {source}")]
    Render { name: String, source: tera::Error },
}

/// Which imaging environment the armed script boots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImagingEnvironment {
    /// wimboot + WinPE (BCD, boot.sdi, boot.wim) running the per-try startnet.cmd.
    #[default]
    Winpe,
    /// A Linux kernel + initrd that speaks the same imaging protocol (labs, tests).
    Linux,
}

pub struct Renderer {
    tera: Tera,
}

/// Site-wide settings of the rendered Windows files (a policy's provisioning profile overrides
/// the locale and time zone).
#[derive(Clone, Debug, Serialize)]
pub struct SiteSettings {
    pub locale: String,
    pub time_zone: String,
    pub recovery_mb: u32,
}

impl Default for SiteSettings {
    fn default() -> Self {
        SiteSettings {
            locale: "en-US".into(),
            time_zone: "UTC".into(),
            recovery_mb: 1024,
        }
    }
}

impl SiteSettings {
    pub fn defaults(&self) -> super::provisioning::SiteDefaults {
        super::provisioning::SiteDefaults {
            locale: self.locale.clone(),
            time_zone: self.time_zone.clone(),
        }
    }
}

/// Everything the per-try files need about the attempt and the image.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptView<'a> {
    pub namespace: &'a str,
    pub endpoint: &'a str,
    pub attempt_id: &'a str,
    pub try_number: u32,
    pub image: &'a str,
    pub boot_mode: &'a str,
    /// http://server/imaging/v1/NS/NAME/ATTEMPT/TRY: what boot firmware fetches (the WinPE
    /// scripts), always plain HTTP.
    pub attempt_url: String,
    /// The same path where the imaging environment speaks the protocol (claim, task, progress,
    /// result, the credential files): the HTTPS listener's when there is one, so the try's
    /// token never crosses plain HTTP.
    pub protocol_url: String,
    /// True when `protocol_url` is HTTPS (the environment verifies it with the site's CA).
    pub protocol_https: bool,
}

impl<'a> AttemptView<'a> {
    /// `protocol_base`: the HTTPS listener's base URL, when the boot service has one.
    pub fn new(
        base_url: &str,
        protocol_base: Option<&str>,
        intent: &'a BootIntent,
    ) -> AttemptView<'a> {
        let protocol = protocol_base.unwrap_or(base_url);
        AttemptView {
            namespace: &intent.namespace,
            endpoint: &intent.endpoint,
            attempt_id: &intent.attempt_id,
            try_number: intent.try_number,
            image: &intent.image,
            boot_mode: &intent.boot_mode,
            attempt_url: attempt_url(base_url, intent),
            protocol_url: attempt_url(protocol, intent),
            protocol_https: protocol_base.is_some(),
        }
    }
}

pub fn attempt_url(base_url: &str, intent: &BootIntent) -> String {
    format!(
        "{base_url}/imaging/v1/{}/{}/{}/{}",
        intent.namespace, intent.endpoint, intent.attempt_id, intent.try_number
    )
}

/// The WIM the imaging environment downloads.
#[derive(Clone, Debug, Serialize)]
pub struct ImageFile {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub index: u32,
}

impl Renderer {
    pub fn new() -> Result<Renderer, RenderError> {
        let mut tera = Tera::default();
        // Tera escapes the .xml templates (unattend.xml) for HTML, which also turns '/' into
        // &#x2F;: valid XML, but not what a person reading a command line expects.
        tera.set_escape_fn(xml_escape);
        tera.register_filter("grub_sq", grub_filter(grub_single_quoted));
        tera.register_filter("grub_comment", grub_filter(grub_comment));
        for (name, body) in TEMPLATES {
            tera.add_raw_template(name, body)
                .map_err(|source| RenderError::Template { name, source })?;
        }
        Ok(Renderer { tera })
    }

    fn render(&self, name: &str, ctx: &Context) -> Result<String, RenderError> {
        self.tera
            .render(name, ctx)
            .map_err(|source| RenderError::Render {
                name: name.to_string(),
                source,
            })
    }

    /// The script every iPXE client fetches first: it chains to its own per-MAC script.
    pub fn boot_ipxe(&self, base_url: &str) -> Result<String, RenderError> {
        let mut ctx = Context::new();
        ctx.insert("base_url", base_url);
        ctx.insert(
            "generated_note",
            "Served by recast's boot service; not a file to edit.",
        );
        self.render("boot.ipxe", &ctx)
    }

    pub fn local(&self, who: &str, boot_mode: &str) -> Result<String, RenderError> {
        let mut ctx = Context::new();
        ctx.insert("who", who);
        ctx.insert("boot_mode", boot_mode);
        self.render("local.ipxe", &ctx)
    }

    pub fn imaging_script(
        &self,
        env: ImagingEnvironment,
        base_url: &str,
        view: &AttemptView<'_>,
    ) -> Result<String, RenderError> {
        let mut ctx = Context::from_serialize(view).map_err(|source| RenderError::Render {
            name: "imaging script".into(),
            source,
        })?;
        ctx.insert("base_url", base_url);
        let name = match env {
            ImagingEnvironment::Winpe => "imaging-winpe.ipxe",
            ImagingEnvironment::Linux => "imaging-linux.ipxe",
        };
        self.render(name, &ctx)
    }

    /// The GRUB configuration every signed-chain machine reads first (grub/grub.cfg over
    /// TFTP): it sources its own per-MAC configuration.
    pub fn grub_root(&self) -> Result<String, RenderError> {
        let mut ctx = Context::new();
        ctx.insert(
            "generated_note",
            "Served by recast's boot service; not a file to edit.",
        );
        self.render("grub.cfg", &ctx)
    }

    /// GRUB's "no reimage armed: boot the local disk".
    pub fn grub_local(&self, who: &str) -> Result<String, RenderError> {
        let mut ctx = Context::new();
        ctx.insert("who", who);
        self.render("local.grub.cfg", &ctx)
    }

    /// GRUB's configuration for an armed try.
    pub fn grub_imaging(
        &self,
        env: ImagingEnvironment,
        view: &AttemptView<'_>,
    ) -> Result<String, RenderError> {
        let ctx = Context::from_serialize(view).map_err(|source| RenderError::Render {
            name: "GRUB imaging configuration".into(),
            source,
        })?;
        let name = match env {
            ImagingEnvironment::Winpe => "imaging-winpe.grub.cfg",
            ImagingEnvironment::Linux => "imaging-linux.grub.cfg",
        };
        self.render(name, &ctx)
    }

    pub fn wds(
        &self,
        namespace: &str,
        endpoint: &str,
        boot_mode: &str,
        wds_server: &str,
    ) -> Result<String, RenderError> {
        let mut ctx = Context::new();
        ctx.insert("namespace", namespace);
        ctx.insert("endpoint", endpoint);
        ctx.insert("boot_mode", boot_mode);
        ctx.insert("wds_server", wds_server);
        self.render("wds.ipxe", &ctx)
    }

    pub fn startnet(
        &self,
        view: &AttemptView<'_>,
        image: &ImageFile,
        site: &SiteSettings,
    ) -> Result<String, RenderError> {
        let mut ctx = Context::from_serialize(view).map_err(|source| RenderError::Render {
            name: "startnet.cmd".into(),
            source,
        })?;
        ctx.insert("image_url", &image.url);
        ctx.insert("image_sha256", &image.sha256);
        ctx.insert("image_size", &image.size);
        ctx.insert("image_index", &image.index);
        ctx.insert("recovery_mb", &site.recovery_mb);
        let setup_complete: Vec<String> = recast_core::imaging::SETUP_COMPLETE_LINES
            .iter()
            .map(|l| cmd_echo_escape(l))
            .collect();
        ctx.insert("setup_complete", &setup_complete);
        let tools: Vec<String> = recast_core::winpe_boot::WINPE_TOOLS
            .iter()
            .map(|(tool, _)| tool.replace('/', "\\"))
            .collect();
        ctx.insert("winpe_tools", &tools.join(" "));
        // cmd.exe wants CRLF line ends.
        Ok(self.render("startnet.cmd", &ctx)?.replace('\n', "\r\n"))
    }

    pub fn winpeshl(&self) -> Result<String, RenderError> {
        Ok(self
            .render("winpeshl.ini", &Context::new())?
            .replace('\n', "\r\n"))
    }

    /// `arch` is the image's processor architecture as unattend names it (`amd64`, `arm64`):
    /// Windows Setup ignores a component whose processorArchitecture is not the image's.
    pub fn unattend(
        &self,
        view: &AttemptView<'_>,
        computer_name: &str,
        arch: &str,
        provisioning: &super::provisioning::Provisioning,
        driver_path: Option<&str>,
    ) -> Result<String, RenderError> {
        let mut ctx = Context::from_serialize(view).map_err(|source| RenderError::Render {
            name: "unattend.xml".into(),
            source,
        })?;
        ctx.insert("hostname", computer_name);
        ctx.insert("arch", arch);
        ctx.insert("p", provisioning);
        ctx.insert("driver_path", &driver_path);
        self.render("unattend.xml", &ctx)
    }
}

/// A value as XML text or attribute content.
pub fn xml_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A value inside GRUB single quotes, where nothing is special but the quote itself: close
/// the quotes, an escaped quote, open them again.
pub fn grub_single_quoted(value: &str) -> String {
    value.replace('\'', r"'\''")
}

/// A value in a GRUB comment line: a line break would end the comment and start a command.
pub fn grub_comment(value: &str) -> String {
    value.replace(['\n', '\r'], " ")
}

fn grub_filter(
    f: fn(&str) -> String,
) -> impl Fn(&tera::Value, &std::collections::HashMap<String, tera::Value>) -> tera::Result<tera::Value>
+ Sync
+ Send {
    move |value, _| match value {
        tera::Value::String(s) => Ok(tera::Value::String(f(s))),
        tera::Value::Number(n) => Ok(tera::Value::String(n.to_string())),
        other => Err(tera::Error::msg(format!(
            "a GRUB value must be a string or a number, not {other}"
        ))),
    }
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `text` as `echo` writes it back verbatim in a batch file: `%` doubled, cmd's operators
/// escaped with `^`.
pub fn cmd_echo_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' => out.push_str("%%"),
            '^' | '&' | '|' | '<' | '>' | '(' | ')' => {
                out.push('^');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        Renderer::new().unwrap();
    }

    #[test]
    fn hostnames_are_netbios_safe() {
        assert_eq!(recast_core::naming::hostname("kiosk-01"), "KIOSK-01");
        assert_eq!(
            recast_core::naming::hostname("a-very-long-endpoint-name"),
            "A-VERY-LONG-END"
        );
        assert_eq!(
            recast_core::naming::hostname("store-0042-till-"),
            "STORE-0042-TILL"
        );
    }

    #[test]
    fn base64_pads_as_rfc4648_says() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
