//! Generates bindings to the system DPDK and compiles the static-inline shim.
//!
//! DPDK is found through `pkg-config libdpdk` only; its compile flags (which
//! carry `-include rte_config.h -march=...`) are used verbatim for both the shim
//! and bindgen, and every `-l` it lists is linked dynamically: a static link
//! would drag in libsystemd, ibverbs and more, and Debian's EAL loads the PMDs
//! from its plugin directory at `rte_eal_init` anyway.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SETUP_HINT: &str = "DPDK development files were not found through `pkg-config libdpdk`.\n\
     Install them with `scripts/setup.sh` (as root), or by hand:\n\
     apt-get install --no-install-recommends dpdk libdpdk-dev pkg-config libclang-dev clang";

fn pkg_config(args: &[&str]) -> Vec<String> {
    let output = Command::new("pkg-config")
        .args(args)
        .arg("libdpdk")
        .output();
    match output {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout)
            .expect("pkg-config printed non-UTF-8 flags")
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        Ok(out) => panic!(
            "\n\n{SETUP_HINT}\n\npkg-config said: {}\n",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => panic!("\n\n{SETUP_HINT}\n\ncould not run pkg-config: {err}\n"),
    }
}

fn main() {
    println!("cargo:rerun-if-changed=src/wrapper.h");
    println!("cargo:rerun-if-changed=src/shim.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");

    let version = pkg_config(&["--modversion"]);
    let cflags = pkg_config(&["--cflags"]);
    let libs = pkg_config(&["--libs"]);
    println!(
        "cargo:rustc-env=DPDK_PKG_VERSION={}",
        version.first().map(String::as_str).unwrap_or("unknown")
    );

    let mut shim = cc::Build::new();
    shim.file("src/shim.c").include("src").opt_level(3);
    for flag in &cflags {
        shim.flag(flag);
    }
    shim.compile("patronus_dpdk_shim");

    for lib in &libs {
        if let Some(name) = lib.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={name}");
        } else if let Some(dir) = lib.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        }
    }

    let bindings = bindgen::Builder::default()
        .header("src/wrapper.h")
        .clang_arg("-Isrc")
        .clang_args(&cflags)
        .allowlist_function("(rte|shim)_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("(RTE|rte)_.*")
        // Packed, aligned unions that bindgen cannot lay out; nothing here uses them.
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_gtp_psc_generic_hdr")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|err| {
            panic!("\n\nbindgen failed on the DPDK headers: {err}\n\n{SETUP_HINT}\n")
        });

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("could not write bindings.rs");
}
