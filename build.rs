//! Checks for the FFmpeg development packages up front, with one clear line instead of a bindgen failure.

const LIBS: [(&str, &str); 7] = [
    ("libavcodec", "libavcodec-dev"),
    ("libavformat", "libavformat-dev"),
    ("libavutil", "libavutil-dev"),
    ("libavfilter", "libavfilter-dev"),
    ("libavdevice", "libavdevice-dev"),
    ("libswscale", "libswscale-dev"),
    ("libswresample", "libswresample-dev"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let missing: Vec<&str> = LIBS
        .iter()
        .filter(|(lib, _)| pkg_config::Config::new().cargo_metadata(false).probe(lib).is_err())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "error: FFmpeg development files not found. Install them with: \
             sudo apt-get install pkg-config clang libclang-dev {}",
            missing.join(" ")
        );
        std::process::exit(1);
    }
}
