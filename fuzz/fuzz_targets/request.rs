//! Control requests as pages publish them: parsed or refused with an error, never a panic; what parses
//! obeys the topic rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_video_wire::protocol::{parse_request, reply_topic_hint, validate_reply_topic, RequestKind, RequestLimits};

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits { max_request_bytes: 4096, prefix: "video".into(), reply_prefix: "pages/".into() };
    for kind in RequestKind::ALL {
        if let Ok(request) = parse_request(kind, data, &limits) {
            assert!(validate_reply_topic(request.reply_topic(), "video").is_ok());
        }
    }
    if let Some(topic) = reply_topic_hint(data, &limits) {
        assert!(validate_reply_topic(&topic, "video").is_ok());
    }
});
