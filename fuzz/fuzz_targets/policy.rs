//! The URL allow-list against any URL a page can send: allowed or refused, never a panic, and what is
//! allowed is under an allowed prefix or a named source.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_video_wire::policy::{AllowList, NamedSource, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let sources = [NamedSource::new("Door", "rtsp://viewer:secret@192.168.1.20:554/stream1", "")];
    let allow = AllowList {
        urls: vec!["https://example.com/live.m3u8".into()],
        prefixes: vec!["rtsp://cameras.example.net/".into(), "http://[::1]:8000/hls/".into()],
    };
    let Ok(policy) = Policy::new(&sources, &allow) else { return };
    if let Ok(allowed) = policy.check(url) {
        let u = allowed.url.to_ascii_lowercase();
        assert!(
            u.starts_with("rtsp://cameras.example.net/")
                || u.starts_with("http://[::1]:8000/hls/")
                || u == "https://example.com/live.m3u8"
                || u.starts_with("rtsp://viewer:secret@192.168.1.20:554/stream1"),
            "allowed outside the list: {}",
            allowed.url
        );
    }
});
