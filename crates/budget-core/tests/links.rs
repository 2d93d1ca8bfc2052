//! One budget per dependency graph: budget-core declares `links`, so cargo refuses a
//! graph holding two semver-incompatible copies of it (each would count the
//! machine's cores as its own). The test resolves a scratch package that depends on
//! this crate and on a stand-in version 0.2 with the same `links` value, offline
//! (`cargo generate-lockfile --offline`: no registry look-up, no build).

use std::path::Path;
use std::process::Command;

fn package(dir: &Path, manifest: &str, build: bool) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "").unwrap();
    if build {
        std::fs::write(dir.join("build.rs"), "fn main() {}\n").unwrap();
    }
}

fn resolve(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO"))
        .args(["generate-lockfile", "--offline"])
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap()
}

#[test]
fn two_incompatible_copies_do_not_resolve() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(here.join("Cargo.toml")).unwrap();
    let links = manifest
        .lines()
        .find_map(|l| l.strip_prefix("links = "))
        .expect("budget-core's Cargo.toml declares `links`")
        .trim_matches('"')
        .to_owned();
    let name = env!("CARGO_PKG_NAME");
    let root = std::env::temp_dir().join(format!("budget-links-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    package(
        &root.join("v2"),
        &format!(
            "[package]\nname = \"{name}\"\nversion = \"0.2.0\"\nedition = \"2021\"\n\
             links = \"{links}\"\nbuild = \"build.rs\"\n"
        ),
        true,
    );
    let consumer = |deps: &str| {
        format!(
            "[package]\nname = \"consumer\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             [workspace]\n[dependencies]\n{deps}"
        )
    };
    let one = format!(
        "one = {{ package = \"{name}\", path = {:?} }}\n",
        here.display().to_string()
    );
    let two = format!(
        "two = {{ package = \"{name}\", path = {:?} }}\n",
        root.join("v2").display().to_string()
    );

    // Alone, this crate resolves (the control).
    package(&root.join("alone"), &consumer(&one), false);
    let alone = resolve(&root.join("alone"));
    assert!(
        alone.status.success(),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );

    // Beside an incompatible copy, cargo refuses the graph, naming the `links` value.
    package(&root.join("both"), &consumer(&format!("{one}{two}")), false);
    let both = resolve(&root.join("both"));
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(!both.status.success(), "two copies resolved: {stderr}");
    assert!(
        stderr.contains(&format!("links to the native library `{links}`")),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
