//! Writes the CRD YAML for every recast kind into a directory (`make crds`), or checks that the
//! directory already holds exactly that (`--check`, used by CI).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut check = false;
    let mut dir = None;
    for arg in args.by_ref() {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] DIR");
                return ExitCode::SUCCESS;
            }
            other => dir = Some(PathBuf::from(other)),
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: crdgen [--check] DIR");
        return ExitCode::from(2);
    };
    let mut stale = Vec::new();
    for crd in recast_crds::all_crds() {
        let path = dir.join(recast_crds::crd_file_name(&crd));
        let yaml = match recast_crds::crd_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot serialise {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                stale.push(path);
            }
        } else if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, yaml))
        {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        for p in &stale {
            eprintln!(
                "crdgen: {} differs from what crds/src generates",
                p.display()
            );
        }
        eprintln!("crdgen: run `make crds` and commit the result");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
