//! The seam between the agent's decisions and the Windows tools that change the machine
//! (`reg.exe` for the update hold, `bcdedit.exe` and `shutdown.exe` for the restart into the
//! network): one program run with arguments, its exit status and what it printed.
//!
//! The logic in [`crate::hold`] and [`crate::restart`] is pure over [`Exec`], so tests see the
//! exact commands and feed output in the shape Windows prints it; only the implementations
//! here start processes.

use std::process::{Command, Stdio};

/// What a command run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub success: bool,
    pub stdout: String,
}

/// Runs one program with arguments. `Err` means the program could not be started at all.
pub trait Exec {
    fn exec(&self, program: &str, args: &[String]) -> Result<ExecOutput, String>;
}

/// Runs the real `reg.exe` (stdout only).
pub struct SystemExec;

impl Exec for SystemExec {
    fn exec(&self, program: &str, args: &[String]) -> Result<ExecOutput, String> {
        let path = crate::collect::system_tool(std::env::var_os("SystemRoot").as_deref(), program);
        let out = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|e| {
                format!("could not start {program}: {e} (the agent runs Windows' own reg.exe)")
            })?;
        Ok(ExecOutput {
            success: out.status.success(),
            // reg.exe writes in the console's OEM code page; what the hold reads (value names,
            // types, numbers) is ASCII in every one, and the rest is marked, not fatal.
            stdout: crate::text::decode_console(&out.stdout, None),
        })
    }
}

/// Runs a Windows tool from `%SystemRoot%\System32` whose messages matter as much as its
/// output (`bcdedit.exe`, `shutdown.exe`): what it wrote to stdout and then to stderr, as one
/// text, decoded in the console's OEM code page. Both streams, because which one a tool
/// writes its error messages to is not documented, and those words are what an operator
/// reads when the agent refuses.
pub struct ToolExec {
    /// The console's OEM code page (see [`crate::collect::code_page_of`]); None reads UTF-8,
    /// else ASCII with anything else marked.
    pub code_page: Option<u16>,
}

impl Exec for ToolExec {
    fn exec(&self, program: &str, args: &[String]) -> Result<ExecOutput, String> {
        let path = crate::collect::system_tool(std::env::var_os("SystemRoot").as_deref(), program);
        let out = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                format!(
                    "could not start {program}: {e} (the agent runs Windows' own tools from %SystemRoot%\\System32)"
                )
            })?;
        let mut text = crate::text::decode_console(&out.stdout, self.code_page);
        let err = crate::text::decode_console(&out.stderr, self.code_page);
        if !err.trim().is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push_str("\r\n");
            }
            text.push_str(&err);
        }
        Ok(ExecOutput {
            success: out.status.success(),
            stdout: text,
        })
    }
}
