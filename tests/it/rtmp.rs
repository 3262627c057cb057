//! The RTMP endpoint's server side against every way a publisher can frame its session: each chunk size
//! from 1 to 65536, the bytes cut anywhere, all four header types, chunk-size changes in the middle of a
//! command, interleaved chunk streams, huge declared lengths. The right key always gets its media through
//! byte for byte; any other name never gets a byte of media to libavformat.

use crate::support;

use mqtt_video_wire::rtmp::amf0::Value;
use mqtt_video_wire::rtmp::chunk::{ChunkWriter, Message, ABORT, MAX_MESSAGE_LEN, SET_CHUNK_SIZE};
use mqtt_video_wire::rtmp::{flv, PublishSession, RtmpError};
use proptest::prelude::*;
use support::rtmp::{Script, AUDIO, VIDEO};

const KEY: &str = "the-right-key-42";

/// What a session made of a publisher's bytes.
#[derive(Debug, Default)]
struct Outcome {
    media: Vec<u8>,
    reply: Vec<u8>,
    published: bool,
    ended: bool,
    error: Option<RtmpError>,
}

/// Feeds `bytes` cut at `cuts` (cycled), accepting a verified publish as the server does.
fn run(key: Option<&str>, bytes: &[u8], cuts: &[usize]) -> Outcome {
    let mut session = PublishSession::new(key);
    let mut outcome = Outcome::default();
    let mut rest = bytes;
    let mut cut = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = (*cut.next().unwrap_or(&usize::MAX)).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let step = session.push(piece).and_then(|out| {
            outcome.reply.extend(out.reply);
            outcome.media.extend(out.media);
            outcome.ended |= out.ended;
            if out.publish {
                outcome.published = true;
                let more = session.accept()?;
                outcome.reply.extend(more.reply);
                outcome.media.extend(more.media);
                outcome.ended |= more.ended;
            }
            Ok(())
        });
        if let Err(e) = step {
            outcome.error = Some(e);
            break;
        }
    }
    outcome
}

/// Media a publisher sends after its publish: metadata, an AVC config, frames of several sizes, audio.
fn media_tags() -> &'static [(u8, u32, Vec<u8>)] {
    static TAGS: std::sync::OnceLock<Vec<(u8, u32, Vec<u8>)>> = std::sync::OnceLock::new();
    TAGS.get_or_init(|| {
        let bytes = |n: usize, seed: u8| (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect::<Vec<u8>>();
        vec![
            (VIDEO, 0, bytes(40, 3)),
            (AUDIO, 0, bytes(7, 5)),
            (VIDEO, 33, bytes(3000, 7)),
            (AUDIO, 21, bytes(300, 11)),
            (VIDEO, 66, bytes(700, 13)),
            (VIDEO, 100, bytes(700, 17)),
        ]
    })
}

/// The publisher's whole session at `chunk_size`, publishing `name`.
fn session(name: &str, chunk_size: u32) -> Vec<u8> {
    let mut s = Script::ffmpeg_opening(name, chunk_size);
    s.metadata();
    for (t, ts, data) in media_tags() {
        s.media(*t, *ts, data);
    }
    s.take()
}

/// The FLV the relay must hand on for [`session`]: header (audio and video, from the metadata), the
/// metadata tag without `@setDataFrame`, then each media message as a tag.
fn expected_flv() -> Vec<u8> {
    let mut out = flv::header(true, true).to_vec();
    let mut body = Vec::new();
    mqtt_video_wire::rtmp::amf0::put_string(&mut body, "onMetaData");
    mqtt_video_wire::rtmp::amf0::put(
        &mut body,
        &Value::EcmaArray(vec![
            ("width".into(), Value::Number(320.0)),
            ("videocodecid".into(), Value::Number(7.0)),
            ("audiocodecid".into(), Value::Number(10.0)),
        ]),
    );
    flv::put_tag(&mut out, flv::SCRIPT, 0, &body);
    for (t, ts, data) in media_tags() {
        flv::put_tag(&mut out, *t, *ts, data);
    }
    out
}

#[test]
fn the_right_key_passes_at_every_chunk_size_and_a_wrong_one_never_does() {
    let expected = expected_flv();
    let started = std::time::Instant::now();
    for chunk_size in 1..=65_536u32 {
        let right = run(Some(KEY), &session(KEY, chunk_size), &[usize::MAX]);
        assert!(right.error.is_none(), "chunk size {chunk_size}: {:?}", right.error);
        assert!(right.published, "chunk size {chunk_size}");
        assert!(right.media == expected, "chunk size {chunk_size}: the media changed on the way");
        // One character off, and a name that is the key with more after it.
        for wrong in ["the-right-key-43", "the-right-key-42x"] {
            let refused = run(Some(KEY), &session(wrong, chunk_size), &[usize::MAX]);
            assert!(
                matches!(refused.error, Some(RtmpError::WrongKey { .. })),
                "chunk size {chunk_size}: {:?}",
                refused.error
            );
            assert!(refused.media.is_empty() && !refused.published, "chunk size {chunk_size}: media got through");
        }
    }
    eprintln!("3 x 65536 sessions in {:?}", started.elapsed());
}

#[test]
fn a_chunk_size_change_in_the_middle_of_the_publish_is_read_right() {
    for (first, then) in [(1, 7), (4, 1), (9, 128), (128, 3), (5, 65_536)] {
        for (name, right) in [(KEY, true), ("the-wrong-key-0", false)] {
            let mut s = Script::new();
            s.chunk_size(first).connect().prepare(KEY).publish_changing_chunk_size(name, then);
            s.media(VIDEO, 0, &[0x17, 0, 0, 0, 0, 1, 2, 3]);
            let outcome = run(Some(KEY), &s.take(), &[3, 1, 1000]);
            assert_eq!(outcome.published, right, "{first} -> {then}: {:?}", outcome.error);
            assert_eq!(!outcome.media.is_empty(), right, "{first} -> {then}");
        }
    }
}

#[test]
fn fcpublish_alone_media_without_publish_and_wrong_names_anywhere_are_refused() {
    let frame = [0x17u8, 0, 0, 0, 0, 9, 9, 9];
    // FCPublish with a wrong name: refused there and then.
    let mut s = Script::new();
    s.connect().command(0, "FCPublish", &[Value::String("WRONG".into())]).media(VIDEO, 0, &frame);
    let o = run(Some(KEY), &s.take(), &[usize::MAX]);
    assert!(matches!(o.error, Some(RtmpError::WrongKey { command: "FCPublish", .. })), "{:?}", o.error);
    assert!(o.media.is_empty());
    // FCPublish with the right name but no publish, then media: media before a publish.
    let mut s = Script::new();
    s.connect().prepare(KEY).media(VIDEO, 0, &frame);
    let o = run(Some(KEY), &s.take(), &[usize::MAX]);
    assert_eq!(o.error, Some(RtmpError::BeforePublish("media")));
    assert!(o.media.is_empty() && !o.published);
    // Media right after createStream, at a tiny chunk size.
    let mut s = Script::new();
    s.chunk_size(1).connect().command(0, "createStream", &[]).media(VIDEO, 0, &frame).media(AUDIO, 0, &[0xaf, 1]);
    let o = run(Some(KEY), &s.take(), &[1]);
    assert_eq!(o.error, Some(RtmpError::BeforePublish("media")));
    assert!(o.media.is_empty());
    // releaseStream with a wrong name; publish with the right one after: refused at releaseStream.
    let mut s = Script::new();
    s.connect().command(0, "releaseStream", &[Value::String("nope".into())]).publish(KEY);
    let o = run(Some(KEY), &s.take(), &[usize::MAX]);
    assert!(matches!(o.error, Some(RtmpError::WrongKey { command: "releaseStream", len: 4 })), "{:?}", o.error);
    // A command before connect, and a play.
    let mut s = Script::new();
    s.publish(KEY);
    assert_eq!(run(Some(KEY), &s.take(), &[usize::MAX]).error, Some(RtmpError::NoConnect));
    let mut s = Script::new();
    s.connect().command(1, "play", &[Value::String(KEY.into())]);
    assert!(matches!(run(Some(KEY), &s.take(), &[usize::MAX]).error, Some(RtmpError::Unsupported(_))));
    // Not RTMP at all.
    assert_eq!(run(Some(KEY), b"GET / HTTP/1.1\r\n\r\n", &[5]).error, Some(RtmpError::Version(b'G')));
}

#[test]
fn the_server_answers_as_a_publisher_expects_and_ends_with_the_publisher() {
    let mut s = Script::ffmpeg_opening(KEY, 4096);
    let opening = s.take();
    let o = run(Some(KEY), &opening, &[usize::MAX]);
    assert!(o.published && o.error.is_none());
    let reply = String::from_utf8_lossy(&o.reply);
    for needle in ["NetConnection.Connect.Success", "_result", "NetStream.Publish.Start"] {
        assert!(reply.contains(needle), "{needle} missing from the answers");
    }
    assert_eq!(o.reply.first(), Some(&3), "S0");
    // A refused publish gets an error status the publisher can print.
    let mut session = PublishSession::new(Some(KEY));
    let err = session.push(&Script::ffmpeg_opening("wrong-key-000000", 128).take()).unwrap_err();
    let refusal = session.refuse(&err.to_string());
    let text = String::from_utf8_lossy(&refusal);
    assert!(text.contains("NetStream.Publish.BadName") && text.contains("wrong stream key"), "{text}");
    assert!(!text.contains("wrong-key-000000"), "the name a publisher gave never comes back in a message");
    // deleteStream ends the session; nothing after it is read.
    let mut s = Script::ffmpeg_opening(KEY, 128);
    s.media(VIDEO, 0, &[1, 2, 3]).command(0, "deleteStream", &[Value::Number(1.0)]).media(VIDEO, 40, &[4, 5]);
    let o = run(Some(KEY), &s.take(), &[usize::MAX]);
    assert!(o.ended && o.error.is_none());
    let mut expected = flv::header(false, true).to_vec();
    flv::put_tag(&mut expected, flv::VIDEO, 0, &[1, 2, 3]);
    assert_eq!(o.media, expected);
    // A ping is answered; a loopback endpoint without a key takes any name.
    assert!(run(None, &Script::ffmpeg_opening("anything", 128).take(), &[7]).published);
}

/// A hostile step after a valid connect.
#[derive(Debug, Clone)]
enum Step {
    ChunkSize(u32),
    Message { csid: u32, type_id: u8, len: usize, timestamp: u32 },
    Abort(u32),
    Garbage(Vec<u8>),
    WrongPublish,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        prop_oneof![Just(0u32), 1u32..300, Just(0x7fff_ffff), Just(0x8000_0000)].prop_map(Step::ChunkSize),
        (2u32..400, any::<u8>(), prop_oneof![0usize..300, 60_000usize..70_000], any::<u32>())
            .prop_map(|(csid, type_id, len, timestamp)| Step::Message { csid, type_id, len, timestamp }),
        (2u32..400).prop_map(Step::Abort),
        prop::collection::vec(any::<u8>(), 1..50).prop_map(Step::Garbage),
        Just(Step::WrongPublish),
    ]
}

proptest! {
    #[test]
    fn any_framing_of_a_valid_session_passes_the_right_key_whole(
        chunk_size in prop_oneof![1u32..300, 300u32..70_000],
        cuts in prop::collection::vec(1usize..5000, 1..20),
        right in prop::bool::ANY,
        name in prop::string::string_regex("[A-Za-z0-9._~-]{0,70}").unwrap(),
    ) {
        let name = if right { KEY.to_string() } else { name };
        let outcome = run(Some(KEY), &session(&name, chunk_size), &cuts);
        if name == KEY {
            prop_assert!(outcome.error.is_none(), "{:?}", outcome.error);
            prop_assert_eq!(outcome.media, expected_flv());
        } else {
            prop_assert!(outcome.media.is_empty() && !outcome.published);
        }
    }

    #[test]
    fn hostile_chunk_streams_never_get_media_through(
        steps in prop::collection::vec(step(), 1..40),
        interleave in prop::collection::vec(any::<bool>(), 1..40),
        cuts in prop::collection::vec(1usize..3000, 1..10),
    ) {
        let mut s = Script::new();
        s.connect().prepare(KEY);
        let mut writer = ChunkWriter::default();
        // Chunks of one message are held back and let out between those of the next steps.
        let mut held: Vec<Vec<u8>> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let mut bytes = Vec::new();
            match step {
                Step::ChunkSize(n) => {
                    let m = Message { csid: 2, type_id: SET_CHUNK_SIZE, stream_id: 0, timestamp: 0, payload: n.to_be_bytes().to_vec() };
                    writer.write(&mut bytes, &m);
                    writer.set_chunk_size(*n);
                }
                Step::Message { csid, type_id, len, timestamp } => {
                    let payload = (0..*len).map(|i| i as u8).collect();
                    let chunks = writer.chunks(&Message { csid: *csid, type_id: *type_id, stream_id: 1, timestamp: *timestamp, payload });
                    if interleave[i % interleave.len()] && chunks.len() > 1 {
                        bytes.extend_from_slice(&chunks[0]);
                        held.extend(chunks.into_iter().skip(1));
                    } else {
                        chunks.iter().for_each(|c| bytes.extend_from_slice(c));
                    }
                }
                Step::Abort(csid) => {
                    let m = Message { csid: 2, type_id: ABORT, stream_id: 0, timestamp: 0, payload: csid.to_be_bytes().to_vec() };
                    writer.write(&mut bytes, &m);
                }
                Step::Garbage(g) => bytes.extend_from_slice(g),
                Step::WrongPublish => {
                    s.publish("a-wrong-key-here");
                    bytes.extend(s.take());
                }
            }
            if let Some(chunk) = held.pop() {
                bytes.extend_from_slice(&chunk);
            }
            s.bytes.extend_from_slice(&bytes);
        }
        let outcome = run(Some(KEY), &s.take(), &cuts);
        prop_assert!(outcome.media.is_empty(), "media got through without a publish");
        prop_assert!(!outcome.published);
    }

    #[test]
    fn any_bytes_are_refused_or_waited_on_never_a_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4000), 0..20)) {
        let mut bytes = vec![3u8];
        bytes.extend(chunks.concat());
        let outcome = run(Some(KEY), &bytes, &[977]);
        prop_assert!(outcome.media.is_empty());
    }
}

#[test]
fn declared_lengths_cost_nothing_until_the_bytes_arrive() {
    // Before a publish only command-sized messages are taken: a 16 MB declaration is refused at its header.
    let mut s = Script::new();
    s.connect();
    let mut header = vec![0x05, 0, 0, 0];
    header.extend_from_slice(&MAX_MESSAGE_LEN.to_be_bytes()[1..]);
    header.extend_from_slice(&[VIDEO, 1, 0, 0, 0]);
    s.bytes.extend_from_slice(&header);
    let o = run(Some(KEY), &s.take(), &[usize::MAX]);
    assert!(matches!(o.error, Some(RtmpError::Chunk(_))), "{:?}", o.error);
}
