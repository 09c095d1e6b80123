//! On-disk cache of compiled components, keyed by the wasm's SHA-256 and the
//! engine's compatibility hash (wasmtime version, target, settings), so an
//! engine never loads code compiled for another.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Returns the component, the wasm's SHA-256, and whether it came from the cache.
pub fn compile(
    engine: &Engine,
    cache_dir: &Path,
    wasm: &[u8],
) -> wasmtime::Result<(Component, String, bool)> {
    let sha = hex::encode(Sha256::digest(wasm));
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let file = cache_dir.join(format!("{sha}-{:016x}.cwasm", hasher.finish()));

    if file.is_file() {
        // SAFETY: the file was written by `Component::serialize` of an engine with
        // the same compatibility hash (it is in the name), into a directory that
        // only this host writes; wasmtime still validates its header on load.
        match unsafe { Component::deserialize_file(engine, &file) } {
            Ok(component) => return Ok((component, sha, true)),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring an unusable cache entry")
            }
        }
    }
    let component = Component::new(engine, wasm)?;
    if let Err(e) = store(&file, &component) {
        tracing::warn!(file = %file.display(), error = %e, "cannot write the component cache");
    }
    Ok((component, sha, false))
}

fn store(file: &Path, component: &Component) -> anyhow::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = tempfile_in(dir)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

fn tempfile_in(dir: &Path) -> std::io::Result<std::path::PathBuf> {
    Ok(dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    )))
}
