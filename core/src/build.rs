//! Windows build numbers as agents report them and images require them: "26100.7623" is
//! CurrentBuild 26100 with update build revision (UBR) 7623. One type for the project, defined
//! in recast-winbuild (the image checks use it too).

pub use recast_winbuild::{Build, BuildParseError};
