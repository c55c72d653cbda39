//! Link flags of the `drakit-kubelet-plugin` binary.

fn main() {
    // Relative relocations packed as DT_RELR (GNU ld >= 2.38, glibc >= 2.36 at run time: the
    // bookworm build and the distroless cc-debian12 image): the 0.7 MB RELA table of ~30,000
    // entries that the dynamic loader read at every start becomes ~9 KB. Smaller binary, fewer
    // pages touched at start-up.
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
