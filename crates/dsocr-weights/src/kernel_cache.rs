//! CubeCL (the CUDA and WGPU backends) compiles its kernels at run time. Left at its defaults
//! it keeps compiled kernels only in memory and puts its on-disk autotune cache under `target/`
//! of whatever Cargo workspace encloses the working directory. For a command-line tool both are
//! wrong: every process would recompile every kernel, and caches would land in the user's
//! projects. [`configure`] fixes this once per process, before the first GPU device exists:
//!
//! - compiled kernels are cached on disk (`[compilation] cache = true`);
//! - caches live in one folder per user: `$DSOCR_KERNEL_CACHE`, else
//!   `$XDG_CACHE_HOME/dsocr/kernels`, else `~/.cache/dsocr/kernels`.
//!
//! A `cubecl.toml` (or `burn.toml` with a `[cubecl]` section) found from the working directory
//! up wins over both, and the `CUBECL_*` environment variables still apply, so CubeCL's own
//! documented switches keep working.

use std::path::PathBuf;
use std::sync::Once;

use cubecl_runtime::config::cache::CacheConfig;
use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

/// The folder kernels and autotune results are cached in (when no `cubecl.toml` says otherwise).
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DSOCR_KERNEL_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("dsocr").join("kernels"))
}

/// Sets CubeCL's process-wide configuration (see the module docs). Idempotent; does nothing if
/// CubeCL already read its configuration.
pub fn configure() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let has_file = has_config_file();
        let mut config =
            if has_file { CubeClRuntimeConfig::from_current_dir() } else { CubeClRuntimeConfig::default() };
        if !has_file {
            config.compilation.cache = true;
            if let Some(dir) = cache_dir() {
                config.environment.path = CacheConfig::Directory(dir);
            }
        }
        let _ = CubeClRuntimeConfig::try_set(config.override_from_env());
    });
}

/// Whether CubeCL would find a configuration file from the working directory up.
fn has_config_file() -> bool {
    let Ok(mut dir) = std::env::current_dir() else { return false };
    loop {
        if ["cubecl.toml", "CubeCL.toml"].iter().any(|f| dir.join(f).is_file()) {
            return true;
        }
        if ["burn.toml", "Burn.toml"].iter().any(|f| {
            std::fs::read_to_string(dir.join(f))
                .is_ok_and(|s| s.lines().any(|l| l.trim() == "[cubecl]" || l.trim().starts_with("[cubecl.")))
        }) {
            return true;
        }
        if !dir.pop() {
            return false;
        }
    }
}
