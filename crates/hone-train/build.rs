//! hone-train's build script: the shared rpath (see `build/rpath.rs`), and the C++ of
//! `cpp/int8_linear.cpp` (libtorch's fbgemm int8 Linear, which tch does not bind),
//! compiled against the libtorch that tch links.

#[path = "../../build/rpath.rs"]
mod rpath;

fn main() {
    rpath::main();
    println!("cargo:rerun-if-changed=cpp/int8_linear.cpp");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        panic!("LIBTORCH is not set: run scripts/setup (.cargo/config.toml points it at .deps/libtorch)");
    };
    let libtorch = std::path::PathBuf::from(libtorch);
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        // PyTorch's Linux wheels are built with the C++11 ABI since 2.7; the pinned
        // torch (scripts/setup) is one of them, as tch's own C++ assumes.
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .file("cpp/int8_linear.cpp")
        .compile("hone_int8");
    // After the static library, so that the linker keeps them for its symbols.
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
