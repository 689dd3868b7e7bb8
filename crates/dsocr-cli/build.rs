//! Offline CUDA builds (docs/gpu.md).
//!
//! Burn 0.22's `cuda` feature links `cubecl-llvm`, whose LLVM bundle is downloaded at build
//! time. With `DOCS_RS=1` (.cargo/config.toml) that download and the LLVM link are skipped, and
//! cubecl-cuda's `cpp` feature makes NVRTC compile every kernel, so LLVM is never called. The
//! LLVM C-API symbols are still referenced, though: this script gives each one a weak stub that
//! aborts if ever reached. A real LLVM, if linked, overrides the weak definitions.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=cuda_llvm_symbols.txt");
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let symbols = std::fs::read_to_string("cuda_llvm_symbols.txt").expect("cuda_llvm_symbols.txt");
    let mut source = String::from("#include <stdlib.h>\n");
    for symbol in symbols.lines().map(str::trim).filter(|s| !s.is_empty() && !s.starts_with('#')) {
        let _ = writeln!(source, "__attribute__((weak)) void {symbol}(void) {{ abort(); }}");
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let c_file = out.join("cuda_llvm_stubs.c");
    std::fs::write(&c_file, source).expect("write stubs");
    let object = out.join("cuda_llvm_stubs.o");
    let compiler = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let status = std::process::Command::new(&compiler)
        .args(["-c", "-fPIC", "-O1", "-o"])
        .arg(&object)
        .arg(&c_file)
        .status()
        .unwrap_or_else(|e| panic!("running the C compiler `{compiler}` for the CUDA LLVM stubs: {e}"));
    assert!(status.success(), "compiling the CUDA LLVM stubs failed");
    println!("cargo:rustc-link-arg-bins={}", object.display());
}
