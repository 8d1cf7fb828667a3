//! recast-agent: runs on each endpoint, reads Windows' own records of updates, servicing and
//! crashes through Windows' own tools, and reports them to the recast gateway.
//!
//! Platform-neutral on purpose: the agent never calls Win32 APIs, so everything but the process
//! spawn is built and tested on any machine, fed with tool output in the exact shape Windows
//! prints it.

pub mod collect;
pub mod enroll;
pub mod events;
pub mod exec;
pub mod hold;
pub mod restart;
pub mod send;
pub mod simulate;
pub mod state;
pub mod text;
pub mod tools;
