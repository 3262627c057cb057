//! Property tests (proptest) of the pure parsers that face the network: control-message decoding and the
//! topic rules, the fMP4 box splitter, the bench's media check, the keyframe extraction behind snapshots and
//! the rate limiter (the RTMP server side has tests/rtmp.rs). Bounded: 256 cases per property by default
//! (PROPTEST_CASES raises it for a longer fuzzing run).

use mqtt_video::bench::measure::MediaCheck;
use mqtt_video::media::encode::snapshot::jpeg_size;
use mqtt_video_wire::fmp4::{Segment, Splitter};
use mqtt_video_wire::keyframe::annex_b_keyframe;
use mqtt_video_wire::protocol::{parse_request, reply_topic_hint, validate_reply_topic, RequestKind, RequestLimits};
use mqtt_video_wire::ratelimit::{RateLimiter, Verdict};
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn make_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
    out
}

fn limits() -> RequestLimits {
    RequestLimits { max_request_bytes: 4096, prefix: "video".into(), reply_prefix: String::new() }
}

/// Requests that look like real ones, with every field drawn from a hostile alphabet.
fn request_json() -> impl Strategy<Value = Vec<u8>> {
    let text = || prop::string::string_regex("[a-z0-9/+#$:. \\x00-\\x1f\"\\\\é]{0,40}").unwrap();
    (text(), text(), prop::bool::ANY, prop::bool::ANY).prop_map(|(url, topic, extra, array)| {
        let mut v = serde_json::json!({ "url": url, "reply_topic": topic });
        if extra {
            v["admin"] = serde_json::json!(true);
        }
        let v = if array { serde_json::json!([v]) } else { v };
        serde_json::to_vec(&v).unwrap()
    })
}

proptest! {
    #[test]
    fn any_bytes_parse_or_fail_cleanly(payload in prop::collection::vec(any::<u8>(), 0..600)) {
        for kind in RequestKind::ALL {
            let _ = parse_request(kind, &payload, &limits());
            let _ = reply_topic_hint(&payload, &limits());
        }
    }

    #[test]
    fn accepted_requests_obey_the_rules(payload in request_json()) {
        for kind in RequestKind::ALL {
            if let Ok(request) = parse_request(kind, &payload, &limits()) {
                let topic = request.reply_topic();
                prop_assert!(validate_reply_topic(topic, "video").is_ok());
                prop_assert!(!topic.contains(['+', '#']) && !topic.starts_with('$') && topic.len() <= 128);
                prop_assert!(topic != "video" && !topic.starts_with("video/") && !topic.ends_with("/status"));
                if let Some(url) = request.url() {
                    prop_assert!(!url.is_empty() && url.len() <= 2048);
                    prop_assert!(!url.chars().any(char::is_control));
                    prop_assert_eq!(url, url.trim());
                }
            }
        }
    }

    #[test]
    fn reply_topic_hints_are_always_valid(payload in request_json()) {
        if let Some(topic) = reply_topic_hint(&payload, &limits()) {
            prop_assert!(validate_reply_topic(&topic, "video").is_ok());
        }
    }

    #[test]
    fn the_splitter_does_not_care_how_bytes_are_cut(
        fragments in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..64), any::<bool>()), 1..12),
        cuts in prop::collection::vec(1usize..200, 1..40),
    ) {
        let mut stream = make_box(b"ftyp", b"iso5");
        stream.extend(make_box(b"moov", b"tracks"));
        for (payload, with_prft) in &fragments {
            if *with_prft {
                stream.extend(make_box(b"prft", &[0; 24]));
            }
            stream.extend(make_box(b"moof", b"header"));
            stream.extend(make_box(b"mdat", payload));
        }
        let whole = Splitter::new().push(&stream).unwrap();
        prop_assert_eq!(whole.len(), 1 + fragments.len());
        let mut split = Splitter::new();
        let mut pieces = Vec::new();
        let mut at = 0;
        for cut in cuts.iter().cycle() {
            if at >= stream.len() {
                break;
            }
            let end = (at + cut).min(stream.len());
            pieces.extend(split.push(&stream[at..end]).unwrap());
            at = end;
        }
        prop_assert_eq!(&pieces, &whole);
        prop_assert_eq!(split.pending(), 0);
        let rebuilt: Vec<u8> = pieces
            .iter()
            .flat_map(|s| match s {
                Segment::Init(b) => b.clone(),
                Segment::Fragment { bytes, .. } => bytes.clone(),
            })
            .collect();
        prop_assert_eq!(rebuilt, stream);
    }

    #[test]
    fn the_splitter_and_media_check_survive_garbage(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..10)) {
        let mut split = Splitter::new();
        let mut check = MediaCheck::default();
        for chunk in &chunks {
            let _ = split.push(chunk);
            let _ = check.push(chunk, 0);
        }
    }

    #[test]
    fn keyframe_extraction_and_jpeg_sizes_survive_garbage(
        moov in prop::collection::vec(any::<u8>(), 0..400),
        moof in prop::collection::vec(any::<u8>(), 0..400),
        mdat in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let init = [make_box(b"ftyp", b"isom"), make_box(b"moov", &moov)].concat();
        let fragment = [make_box(b"moof", &moof), make_box(b"mdat", &mdat)].concat();
        let _ = annex_b_keyframe(&init, &fragment);
        let _ = annex_b_keyframe(&moov, &moof);
        let _ = jpeg_size(&[&[0xff, 0xd8][..], &mdat].concat());
    }

    #[test]
    fn a_requester_never_gets_more_than_its_budget(per_minute in 1u32..600, gaps_ms in prop::collection::vec(0u64..3000, 1..200)) {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(per_minute, 0, t0);
        let mut now = t0;
        let mut allowed = 0u32;
        for gap in &gaps_ms {
            now += Duration::from_millis(*gap);
            if limiter.check(Some("pages/p/media"), now) == Verdict::Allow {
                allowed += 1;
            }
        }
        let burst = f64::from((per_minute / 4).max(5));
        let budget = burst + now.duration_since(t0).as_secs_f64() * f64::from(per_minute) / 60.0;
        prop_assert!(f64::from(allowed) <= budget + 1e-9, "{} allowed, budget {}", allowed, budget);
    }
}
