//! Makes the `picie` binaries find libtorch by themselves and keeps CUDA linked.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    let mut version = String::from("unknown");
    if !lib.is_empty() {
        // An rpath, so that neither LD_LIBRARY_PATH nor an activated venv is needed at run time.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // With the default --as-needed, the linker drops libtorch_cuda (nothing references
        // it by symbol) and CUDA is then silently unavailable; keep it. The `picie` package
        // does so with its `cuda` feature (on by default); the library crates' test binaries
        // always do.
        let cuda = std::env::var("CARGO_PKG_NAME").as_deref() != Ok("picie")
            || std::env::var_os("CARGO_FEATURE_CUDA").is_some();
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        let names: &[&str] = if cuda {
            &["torch_cuda", "torch", "torch_cpu", "c10"]
        } else {
            &["torch", "torch_cpu", "c10"]
        };
        for name in names {
            if Path::new(&lib).join(format!("lib{name}.so")).exists() {
                println!("cargo:rustc-link-arg=-l{name}");
            }
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        // PyTorch's wheel ships torch/version.py beside torch/lib.
        let py = Path::new(&lib).join("../version.py");
        println!("cargo:rerun-if-changed={}", py.display());
        if let Ok(text) = std::fs::read_to_string(&py) {
            if let Some(v) = text
                .lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
            {
                version = v;
            }
        }
    }
    println!("cargo:rustc-env=PICIE_LIBTORCH_VERSION={version}");
}
