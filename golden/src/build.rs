//! Windows build numbers, as the image checks read them from WIM metadata: the project's one
//! type, defined in recast-winbuild (the core compares reports with it too).

pub use recast_winbuild::{Build, BuildParseError};
