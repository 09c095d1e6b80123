//! Builds every component (bundled plugins and the misbehaving test plugins)
//! for wasm32-wasip2 with `plugins/build.sh`, and tells the tests where they are.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let repo = manifest
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo.join("target"));
    let components = target_dir.join("test-components");
    let cache = target_dir.join("test-component-cache");

    for watched in ["wit", "guest-sdk", "plugins", "tests/plugins"] {
        println!("cargo:rerun-if-changed={}", repo.join(watched).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut cmd = Command::new("bash");
    cmd.arg(repo.join("plugins/build.sh")).arg(&components);
    // A clean environment for the nested cargo: nothing of this build leaks in.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTFLAGS")
            || key == "RUSTDOCFLAGS"
            || key == "TARGET"
            || key == "HOST"
            || key == "OUT_DIR"
            || key == "PROFILE"
            || key == "OPT_LEVEL"
            || key == "DEBUG"
            || key == "NUM_JOBS"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("WASM_TARGET_DIR", target_dir.join("wasm"));
    let status = cmd.status().expect("cannot run bash plugins/build.sh");
    if !status.success() {
        panic!("building the test components failed (bash plugins/build.sh); see the output above");
    }
    println!(
        "cargo:rustc-env=OUTBOX_TEST_COMPONENTS={}",
        components.display()
    );
    println!("cargo:rustc-env=OUTBOX_TEST_CACHE={}", cache.display());
}
