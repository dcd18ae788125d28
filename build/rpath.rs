//! Shared build script of the crates whose binaries or tests link libtorch: it records
//! libtorch's folder as an rpath so that they run without LD_LIBRARY_PATH.
pub fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
